"""`python -m reasondiff.finetune [+exp=NAME] [key=value ...]` — see conf/finetune.yaml and reasondiff/config/finetune.py; the recipe is reasondiff/finetune/run.py."""

from reasondiff.stage import hydra_app

main = hydra_app("finetune")

if __name__ == "__main__":
    main()
