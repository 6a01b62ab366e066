"""`python -m reasondiff.train [+exp=NAME] [key=value ...]` — see conf/train.yaml and reasondiff/config/train.py; the recipe is reasondiff/train/run.py."""

from reasondiff.stage import hydra_app

main = hydra_app("train")

if __name__ == "__main__":
    main()
