"""`python -m reasondiff.intervene [+exp=NAME] [key=value ...]` — see conf/intervene.yaml and reasondiff/config/intervene.py; the recipe is reasondiff/intervene/run.py."""

from reasondiff.app.stage import hydra_app
from reasondiff.tiny import prepare_tiny_world

main = hydra_app("intervene", prepare=prepare_tiny_world)

if __name__ == "__main__":
    main()
