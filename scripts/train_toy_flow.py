"""Train the toy flow-matching model (``toy-flow``): see ``dreamdist.toyworld.train_flow``."""

from dreamdist.toyworld.train_flow import main

if __name__ == "__main__":
    main()
