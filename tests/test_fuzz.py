"""Every named endpoint, every parameter, hostile values: each call gets a clear message or a
valid result, the server stays up, and the next valid request succeeds. Prints the count."""

import struct
import zlib

import pytest
from gradio_client import handle_file

# What an unhandled exception looks like to a client: no sentence a user could act on.
UNCLEAR = "has not enabled verbose error reporting"
TEXTS = ["   ", "x" * 50_000, "ünïcødé ✓ 😀 \u202e ../../etc/passwd"]
NUMBERS = [-1, 1e308, "seven"]
CHOICES = ["not-a-choice", 123]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hostile_files(folder) -> list:
    text = folder / "notes.png"
    text.write_text("not an image at all")
    truncated = folder / "truncated.png"
    truncated.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))[:9])
    tiny = folder / "tiny.png"
    tiny.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + png_chunk(b"IEND", b"")
    )  # fmt: skip
    bomb = folder / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(bytes(1_000_000))) + png_chunk(b"IEND", b"")
    )  # fmt: skip
    return [handle_file(str(path)) for path in (text, truncated, tiny, bomb)]


def hostile_values(parameter: dict, files: list) -> list:
    kind = str(parameter.get("python_type", {}).get("type", ""))
    if kind == "filepath":
        return files
    if kind.startswith("Literal") or kind.startswith("list"):
        return CHOICES
    if kind in ("int", "float"):
        return NUMBERS
    if kind == "str":
        return TEXTS
    return [None, "garbage", 42]


def baseline(parameter: dict):
    # The cheapest valid call: one denoising step (a hostile value elsewhere must not cost a run).
    if "step" in str(parameter.get("label", "")).lower() or str(parameter.get("parameter_name")) == "step_count":
        return 1
    if parameter.get("parameter_has_default"):
        return parameter["parameter_default"]
    kind = str(parameter.get("python_type", {}).get("type", ""))
    return {"str": "", "int": 0, "float": 0.0}.get(kind)


@pytest.mark.slow
def test_every_endpoint_answers_hostile_values_with_a_sentence(running_app, tmp_path, caplog):
    client, _ = running_app
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    files = hostile_files(tmp_path)
    tried, unclear = 0, []
    for name, endpoint in endpoints.items():
        parameters = endpoint["parameters"]
        values = [baseline(parameter) for parameter in parameters]
        for index, parameter in enumerate(parameters):
            for hostile in hostile_values(parameter, files):
                call = list(values)
                call[index] = hostile
                tried += 1
                try:
                    client.predict(*call, api_name=name)
                except Exception as error:  # a refusal is fine when it says what is wrong
                    if UNCLEAR in str(error) or not str(error).strip():
                        unclear.append(f"{name} {parameter.get('parameter_name')}={str(hostile)[:30]!r}")
        assert isinstance(client.predict(api_name="/random_seed"), int | float), f"down after {name}"
    # A real fault is the studio's own traceback in the log (tabs.common.user_errors writes it).
    faults = [record.getMessage() for record in caplog.records if record.exc_info and record.name.startswith("tabs")]
    print(f"\nfuzz: {len(endpoints)} endpoints, {tried} hostile calls, {len(unclear)} without a clear message, "
          f"{len(faults)} faults")  # fmt: skip
    assert unclear == [], "\n".join(unclear)
    assert faults == [], "\n".join(faults)
