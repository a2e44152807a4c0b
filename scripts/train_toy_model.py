"""Train dreamdist's built-in toy text-to-image model from scratch (see dreamdist.toyworld.train_base).

python scripts/train_toy_model.py --threads 1 --vae-minutes 7 --unet-minutes 58
"""

from dreamdist.toyworld.train_base import main

if __name__ == "__main__":
    main()
