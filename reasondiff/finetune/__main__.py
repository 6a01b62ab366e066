"""`python -m reasondiff.finetune [+exp=NAME] [key=value ...]` — see conf/finetune.yaml and reasondiff/config/finetune.py; the recipe is reasondiff/finetune/run.py."""

from reasondiff.app.stage import hydra_app
from reasondiff.tiny import prepare_tiny_world

main = hydra_app("finetune", prepare=prepare_tiny_world)

if __name__ == "__main__":
    main()
