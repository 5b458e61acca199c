"""Attention control for joint-attention DiTs (SD3 [image, text], FLUX [text, image]).

Methods describe what to do as a list of edits (record, copy maps, swap values, scale scores,
mask, share keys/values), each limited to chosen layers and steps, and run the transformer
inside `controlled(...)`, which installs the studio's processors and always restores the
originals. Methods configure; they never subclass a transformer.
"""

from studio.attention.control import (
    AttentionCall,
    AttentionController,
    AttentionEdit,
    BranchCache,
    CaptureBranch,
    CopyImageMap,
    MaskAttention,
    MaskGuidedSharing,
    RecordAttention,
    RecordTextAttention,
    ReplaceImageValues,
    Rows,
    ScaleTokenScores,
    ShareKeysValues,
)
from studio.attention.processors import controllable_layers, controlled, cross_layers, joint_layers
from studio.attention.tokens import word_token_indices

__all__ = [
    "AttentionCall",
    "AttentionController",
    "AttentionEdit",
    "BranchCache",
    "CaptureBranch",
    "CopyImageMap",
    "MaskAttention",
    "MaskGuidedSharing",
    "RecordAttention",
    "RecordTextAttention",
    "ReplaceImageValues",
    "Rows",
    "ScaleTokenScores",
    "ShareKeysValues",
    "controllable_layers",
    "controlled",
    "cross_layers",
    "joint_layers",
    "word_token_indices",
]
