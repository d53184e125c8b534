"""`vllama generate`: answer a prompt about a video, an image or a feature-store sample."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Load trained branch weights (our export videollama_<branch>_<size>.pth / .safetensors, or a released
Video-LLaMA .pth) onto the frozen LLM and answer a prompt about one piece of media:

  --video FILE / --image FILE   decoded and preprocessed as the original's inference (8 uniform
                                frames at 224 px; audio as ImageBind fbank clips for an AL model);
                                needs --encoders, the folder with the frozen encoder checkpoints
                                (blip2_pretrained_flant5xxl.pth, eva_vit_g.pth, imagebind_huge.pth)
  --features STORE/DATASET/KEY  a feature-store sample's stored features (view 0), no encoders needed

Chat mode (default) puts the prompt in the prompt template, as stage 2 trains; --caption feeds only
[BOS] + media and prints the continuation, the stage-1 format. Greedy unless --sample."""

EPILOG = """\
examples:
  vllama generate --weights runs/vl_stage1_tiny/export/videollama_vl_tiny.pth --size tiny \\
      --llm demo-output/tiny-llama --features demo-output/features/tiny/webvid_val/1000000230 --caption
  vllama generate --weights VL_LLaMA_2_7B_Finetuned.pth --size 7b --llm llama-2-7b-chat-hf \\
      --encoders ckpt/ --video clip.mp4 --prompt "What happens in this video?" --sample --temperature 0.7"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="answer a prompt about a video, an image or a feature-store sample with trained weights",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--weights", required=True, metavar="URI", help="branch weights (.pth or .safetensors), local or s3://"
    )
    p.add_argument("--size", choices=["tiny", "7b", "13b"], help="model size; required for a .pth")
    p.add_argument(
        "--llm", required=True, metavar="DIR", help="the HF-format LLaMA directory the branch was trained with"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", metavar="FILE")
    source.add_argument("--image", metavar="FILE")
    source.add_argument("--features", metavar="STORE/DATASET/KEY")
    p.add_argument("--encoders", metavar="DIR", help="frozen encoder checkpoints, for --video/--image")
    p.add_argument("--prompt", default="Describe this video.", help="the question (chat mode)")
    p.add_argument("--caption", action="store_true", help="stage-1 caption mode: no prompt, no template")
    p.add_argument("--template", choices=["llama2", "vicuna"], default="llama2", help="prompt template (chat mode)")
    p.add_argument("--sample", action="store_true", help="sample (top-p, top-k 50) instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, help="makes sampling reproducible")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError
    from orchestration import generate

    if (args.video or args.image) and not args.encoders:
        print("vllama generate: --video/--image need --encoders DIR (the frozen encoder checkpoints)", file=sys.stderr)
        return 2
    try:
        model = generate.load_model(args.weights, args.llm, args.size, args.encoders)
        if args.features:
            media = generate.media_from_sample(generate.find_sample(args.features))
        else:
            media = generate.media_from_file(args.video or args.image, "video" if args.video else "image")
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"vllama generate: {e}", file=sys.stderr)
        return 1
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                   top_p=args.top_p, seed=args.seed)  # fmt: skip
    if args.caption:
        features = media.vl_features if "vl" in model.branches else media.al_features
        if features is None:
            print("vllama generate: --caption reads stored features; use it with --features", file=sys.stderr)
            return 2
        reply = generate.caption(model, features, **options)
    else:
        reply = generate.answer(model, media, args.prompt, template_name=args.template, **options)
    print(reply.text)
    return 0
