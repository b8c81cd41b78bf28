"""Layers shared by the teacher and the student (torch only)."""

from d3r.nn.activations import confidence_activation, pointmap_activation, postprocess
from d3r.nn.attention import Attention
from d3r.nn.block import Block, LayerScale, Mlp, run_block
from d3r.nn.dpt import DPTHead, DPTPointmapHead
from d3r.nn.embeddings import image_index_embedding
from d3r.nn.fusion import GlobalFusion, draw_image_ids
from d3r.nn.patch_embed import PatchEmbed
from d3r.nn.rope import RoPE2D, patch_positions
from d3r.nn.view_chunks import run_in_view_chunks

__all__ = [
    "Attention",
    "Block",
    "DPTHead",
    "DPTPointmapHead",
    "GlobalFusion",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RoPE2D",
    "confidence_activation",
    "draw_image_ids",
    "image_index_embedding",
    "patch_positions",
    "pointmap_activation",
    "postprocess",
    "run_block",
    "run_in_view_chunks",
]
