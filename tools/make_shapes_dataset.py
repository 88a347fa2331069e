#!/usr/bin/env python
"""Write a synthetic detection dataset (shapes on textured backgrounds, COCO annotations).

    python tools/make_shapes_dataset.py OUT_DIR [--count 500] [--size 256] [--max-objects 5] [--seed 0]
"""
import argparse

from shapes import generate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--max-objects", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = generate(args.out, args.count, size=(args.size, args.size), max_objects=args.max_objects, seed=args.seed)
    print(path)
