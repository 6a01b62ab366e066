"""`python -m reasondiff.train [+exp=NAME] [key=value ...]` — see conf/train.yaml and reasondiff/config/train.py; the recipe is reasondiff/train/run.py."""

from reasondiff.app.stage import hydra_app
from reasondiff.tiny import prepare_tiny_world

main = hydra_app("train", prepare=prepare_tiny_world)

if __name__ == "__main__":
    main()
