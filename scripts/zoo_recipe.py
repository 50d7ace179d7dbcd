"""The demo zoo's recipe: every model's configuration and every training schedule of
``scripts/build_demo_zoo.py``, the full build's and ``--quick``'s.

Plain dicts, read by the build: ``ZOO_CONFIG`` (per family its tokenizer and its variants'
architectures and sampling settings), ``FULL`` / ``QUICK`` (pool sizes and training steps),
``INV_DECODER_*`` (how the inverse decoders are fine-tuned) and ``VARIANT_NET_QUICK`` (the quick
build's variant nets; the full build uses :func:`variant_net.default_config`). Changing a value
changes the weights a build writes (``tests/test_zoo_training.py`` pins the quick build's sha256).
"""
from __future__ import annotations

from typing import Dict

import demo_photos

__all__ = ["NUM_CLASSES", "ZOO_CONFIG", "FULL", "QUICK", "INV_DECODER_FULL", "INV_DECODER_LONG", "INV_DECODER_AUG_CONTINUED",
           "INV_DECODER_OVERRIDES", "INV_DECODER_QUICK", "VARIANT_NET_QUICK"]

NUM_CLASSES = len(demo_photos.MODEL_PHOTOS)
ZOO_CONFIG: Dict[str, dict] = {
    "VAR": {
        "tokenizer": dict(V=256, Cvae=16, ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1, patch_nums=[1, 2, 3, 4, 5, 6, 8],
                          share_quant_resi=4, image_size=64),
        "variants": {
            name: {"config": dict(depth=d, embed_dim=w, num_heads=4, num_classes=NUM_CLASSES, attn_l2_norm=True, shared_aln=False),
                   "sampling": dict(cfg=2.0, top_k=900, top_p=0.96)}
            for name, d, w in (("var16", 2, 96), ("var20", 3, 112), ("var24", 4, 128), ("var30", 5, 144))
        },
    },
    "RAR": {
        "tokenizer": dict(hidden_channels=32, channel_mult=[1, 1, 2, 2], num_resolutions=4, num_res_blocks=1, z_channels=16,
                          codebook_size=256, resolution=64),
        "variants": {
            name: {"config": dict(hidden_size=w, num_hidden_layers=d, num_attention_heads=4, intermediate_size=4 * w,
                                  image_seq_len=64, condition_num_classes=NUM_CLASSES, codebook_size=256),
                   "sampling": dict(guidance_scale=g, guidance_scale_pow=p, temperature=t)}
            # the official settings' trend, scaled to this zoo
            for name, d, w, g, p, t in (("rarb", 2, 96, 4.0, 2.75, 1.0), ("rarl", 3, 112, 3.8, 2.5, 1.02),
                                        ("rarxl", 4, 128, 2.5, 1.5, 1.02), ("rarxxl", 5, 144, 3.0, 1.2, 1.02))
        },
    },
    "OUTLIER": {
        "tokenizer": dict(hidden_channels=32, channel_mult=[1, 2, 2, 2], num_resolutions=4, num_res_blocks=1, z_channels=8,
                          codebook_size=128, resolution=64),
        "variants": {"outlier_iar": {"config": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384,
                                                    image_seq_len=64, condition_num_classes=NUM_CLASSES, codebook_size=128),
                                     "sampling": dict(guidance_scale=3.0, guidance_scale_pow=1.0, temperature=1.0)}},
    },
}
# Larger variants get more steps as well as more parameters, as the official larger models were
# trained with more compute: at a fixed step budget the demo-size transformers are step-limited and
# all reach nearly the same NLL (the first zoo, 300/500 steps each, failed the size ordering).
FULL = dict(pool=6000, val=480, tok_steps={"VAR": 450, "RAR": 450, "OUTLIER": 250},
            var_steps={"var16": 300, "var20": 400, "var24": 500, "var30": 600},
            rar_steps={"rarb": 400, "rarl": 550, "rarxl": 800, "rarxxl": 900}, rar_select_every=50, outlier_gen_steps=300,
            gen_pool={"RAR": 24000})
INV_DECODER_FULL = dict(images=1536, epochs=6, batch_size=32, lr=1e-4)
# The plain inverse decoders train longer: their loss was still falling after 6 epochs on 1 536
# images (2.5 % per epoch), and for RAR every further epoch found more of the generated tokens
# again (26 → 37 % after 16 more epochs on 6 144 fresh images); see docs/diagnosis.md.
INV_DECODER_LONG = dict(images=6144, epochs=18, lr=3e-4)
# The augmented ones (robustness evaluation) continue the plain one's training with the rest of the
# curriculum: its 18 epochs are the "none" stage, then 2 epochs each of weak, medium and strong
# augmentation on the same 6 144 generations. Trained from the encoder on 1 536 images for 6 epochs
# instead (until 2026-11-24), they ended far less trained than the plain ones (loss 5.4e-3 against
# 2.3e-3 for VAR), which confounded the plain-vs-augmented comparison.
INV_DECODER_AUG_CONTINUED = dict(images=6144, epochs=6, lr=1e-4, schedule=[["weak", 2], ["medium", 2], ["strong", 2]],
                                 init_from_plain=True)
INV_DECODER_OVERRIDES = {("VAR", False): INV_DECODER_LONG, ("RAR", False): INV_DECODER_LONG,
                         ("VAR", True): INV_DECODER_AUG_CONTINUED, ("RAR", True): INV_DECODER_AUG_CONTINUED}
INV_DECODER_QUICK = dict(images=16, epochs=2, batch_size=8, lr=1e-4)
QUICK = dict(pool=96, val=32, tok_steps={"VAR": 6, "RAR": 6, "OUTLIER": 4},
             var_steps={"var16": 4, "var20": 4, "var24": 4, "var30": 4}, rar_steps=4, rar_select_every=2,
             outlier_gen_steps=4, gen_pool={"RAR": 192})
VARIANT_NET_QUICK = dict(images_per_variant=4, gen_batch=4, epochs=1, batch_size=8)
