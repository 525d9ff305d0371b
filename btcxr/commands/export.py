"""`btcxr export`: a fine-tuned detector as TorchScript or ONNX, or its backbone as a torchvision state dict."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Export a checkpoint written by `btcxr finetune` (best.pt or last.pt) for use without btcxr:

  torchscript  the whole detector, scripted (torch.jit.load after `import torchvision`; no btcxr)
  onnx         the whole detector as an ONNX graph with a fixed input 1 x SIZE x SIZE (onnxruntime)
  state_dict   the backbone as a plain torchvision ResNet state dict (.pth, no fc): strict=True into
               torchvision.models.resnet50() with fc = nn.Identity()
  safetensors  the same backbone state dict as .safetensors

Detector input: one gray image, float32 [1, H, W] in [0, 1], longest side = SIZE; the 3-channel expansion
and the ImageNet normalisation happen inside. Output: boxes [N, 4] in the pixels of that input (divide by
the resize factor for original pixels), scores [N], class_ids [N] (VinDr 0..13). The contract is stored
in the file as JSON (TorchScript _extra_files 'btcxr.json', ONNX metadata_props / safetensors metadata
'btcxr'). Every file is read back and run on a synthetic radiograph next to the PyTorch model before it
is kept: boxes within 2e-4 x SIZE px, scores within 5e-4, class ids equal; a file that disagrees is not
written. onnx and safetensors need the optional extra: pip install 'btcxr[export]'. See docs/export.md.
"""

EXAMPLES = """\
examples:
  btcxr export --checkpoint runs/finetune/bt-640-s0/best.pt --format torchscript --out detector.pt
  btcxr export --checkpoint best.pt --format onnx --out detector-640.onnx
  btcxr export --checkpoint best.pt --format onnx --size 1024 --out detector-1024.onnx
  btcxr export --checkpoint best.pt --format safetensors --out resnet50-backbone.safetensors
"""


# btcxr.export.FORMATS, spelled out here so that `btcxr --help` imports no torch (tests/test_export.py).
FORMATS = ("torchscript", "onnx", "state_dict", "safetensors")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a fine-tuned detector to TorchScript / ONNX, or its backbone as a torchvision state dict",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="best.pt / last.pt of `btcxr finetune`")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="what to write")
    parser.add_argument("--out", required=True, metavar="FILE", help="output file (written atomically)")
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help="longest input side in pixels (default: the checkpoint's own size; >= 32)")
    parser.add_argument("--device", default="cpu",
                        help="where the export and its check run: cpu (default), cuda, cuda:1, auto")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from btcxr.export import export

    report = export(args.checkpoint, args.out, args.fmt, size=args.size, device=args.device)
    print(report.summary())
    return 0
