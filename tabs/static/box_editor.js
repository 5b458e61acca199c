// Layout box editor for gr.HTML: drag on empty canvas to draw a box, drag a box to move it, drag a
// corner of the selected box to resize it, Delete / Backspace (or the button) removes it.
// State travels as the component's value: {"aspect": w/h, "boxes": [{caption, x1, y1, x2, y2}]},
// coordinates 0..1. Every finished gesture sets the value and triggers "input" for the server.
const MAX_BOXES = 10;
const MIN_SIDE = 0.02;
const HANDLE = 0.025;
const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
                 "#469990", "#9a6324"];
let aspect = 1;
let boxes = [];
let selected = -1;
let gesture = null;

element.tabIndex = 0;
const clamp = (value) => Math.min(1, Math.max(0, value));
const stage = () => element.querySelector(".layout-stage");
const say = (text) => { const status = element.querySelector(".layout-status"); if (status) status.textContent = text; };

function read() {
  try {
    const value = JSON.parse(props.value || "{}");
    aspect = value.aspect > 0 ? value.aspect : 1;
    boxes = (value.boxes || []).map((box) => ({ ...box }));
  } catch (error) {
    boxes = [];
  }
  if (selected >= boxes.length) selected = -1;
}

function publish() {
  props.value = JSON.stringify({ aspect, boxes });
  trigger("input");
}

function draw() {
  const area = stage();
  if (!area) return;
  area.style.aspectRatio = String(aspect);
  area.replaceChildren(...boxes.map((box, index) => {
    const frame = document.createElement("div");
    frame.className = "layout-box" + (index === selected ? " selected" : "");
    frame.dataset.index = String(index);
    Object.assign(frame.style, {
      left: `${box.x1 * 100}%`, top: `${box.y1 * 100}%`,
      width: `${(box.x2 - box.x1) * 100}%`, height: `${(box.y2 - box.y1) * 100}%`,
      borderColor: COLOURS[index % COLOURS.length], color: COLOURS[index % COLOURS.length],
    });
    const label = document.createElement("span");
    label.textContent = `${index + 1}. ${box.caption || ""}`;
    frame.appendChild(label);
    if (index === selected) {
      for (const corner of ["nw", "ne", "sw", "se"]) {
        const handle = document.createElement("i");
        handle.className = `layout-handle ${corner}`;
        frame.appendChild(handle);
      }
    }
    return frame;
  }));
  say(selected >= 0 ? `Box ${selected + 1} selected: drag to move, drag a corner to resize, Delete to remove.`
                    : `Drag on the canvas to draw a box (${boxes.length}/${MAX_BOXES}).`);
}

function pointAt(event) {
  const rect = stage().getBoundingClientRect();
  return { x: clamp((event.clientX - rect.left) / rect.width), y: clamp((event.clientY - rect.top) / rect.height) };
}

function cornerUnder(point) {
  if (selected < 0) return null;
  const box = boxes[selected];
  const reach = HANDLE * 1.5;
  for (const [name, x, y] of [["nw", box.x1, box.y1], ["ne", box.x2, box.y1], ["sw", box.x1, box.y2], ["se", box.x2, box.y2]]) {
    if (Math.abs(point.x - x) <= reach && Math.abs(point.y - y) <= reach) return name;
  }
  return null;
}

function boxUnder(point) {
  for (let index = boxes.length - 1; index >= 0; index--) {
    const box = boxes[index];
    if (point.x >= box.x1 && point.x <= box.x2 && point.y >= box.y1 && point.y <= box.y2) return index;
  }
  return -1;
}

function removeSelected() {
  if (selected < 0) return;
  boxes.splice(selected, 1);
  selected = -1;
  draw();
  publish();
}

element.addEventListener("pointerdown", (event) => {
  if (!event.target.closest(".layout-stage")) return;
  event.preventDefault();
  element.focus({ preventScroll: true });
  const point = pointAt(event);
  const corner = cornerUnder(point);
  if (corner) {
    gesture = { kind: "resize", corner, start: point, original: { ...boxes[selected] } };
  } else if (boxUnder(point) >= 0) {
    selected = boxUnder(point);
    gesture = { kind: "move", start: point, original: { ...boxes[selected] } };
  } else if (boxes.length >= MAX_BOXES) {
    selected = -1;
    draw();
    say(`At most ${MAX_BOXES} boxes: delete one to draw another.`);
    return;
  } else {
    boxes.push({ caption: "", x1: point.x, y1: point.y, x2: point.x, y2: point.y });
    selected = boxes.length - 1;
    gesture = { kind: "draw", start: point };
  }
  stage().setPointerCapture?.(event.pointerId);
  draw();
});

element.addEventListener("pointermove", (event) => {
  if (!gesture) return;
  const point = pointAt(event);
  const box = boxes[selected];
  if (gesture.kind === "draw") {
    Object.assign(box, { x1: Math.min(gesture.start.x, point.x), x2: Math.max(gesture.start.x, point.x),
                         y1: Math.min(gesture.start.y, point.y), y2: Math.max(gesture.start.y, point.y) });
  } else if (gesture.kind === "move") {
    const { x1, y1, x2, y2 } = gesture.original;
    const dx = Math.min(1 - x2, Math.max(-x1, point.x - gesture.start.x));
    const dy = Math.min(1 - y2, Math.max(-y1, point.y - gesture.start.y));
    Object.assign(box, { x1: x1 + dx, x2: x2 + dx, y1: y1 + dy, y2: y2 + dy });
  } else {
    const fixed = gesture.original;
    const xs = gesture.corner.includes("w") ? [point.x, fixed.x2] : [fixed.x1, point.x];
    const ys = gesture.corner.includes("n") ? [point.y, fixed.y2] : [fixed.y1, point.y];
    Object.assign(box, { x1: Math.min(...xs), x2: Math.max(...xs), y1: Math.min(...ys), y2: Math.max(...ys) });
  }
  draw();
});

element.addEventListener("pointerup", () => {
  if (!gesture) return;
  const box = boxes[selected];
  const finished = gesture;
  gesture = null;
  if (box.x2 - box.x1 < MIN_SIDE || box.y2 - box.y1 < MIN_SIDE) {
    if (finished.kind === "draw") {
      boxes.splice(selected, 1);
      selected = -1;
      draw();
      say("Drag to draw a box: a click alone makes none.");
      return;
    }
    Object.assign(box, finished.original);  // a box resized to nothing keeps its old size
  }
  for (const key of ["x1", "y1", "x2", "y2"]) box[key] = Math.round(box[key] * 1000) / 1000;
  draw();
  publish();
});

element.addEventListener("keydown", (event) => {
  if ((event.key === "Delete" || event.key === "Backspace") && selected >= 0) {
    event.preventDefault();
    removeSelected();
  }
});

element.addEventListener("click", (event) => {
  if (event.target.closest(".layout-delete")) removeSelected();
});

watch("value", () => { read(); draw(); });
read();
draw();
