"""`python -m reasondiff.harvest [+exp=NAME] [key=value ...]` — see conf/harvest.yaml and reasondiff/config/harvest.py; the recipe is reasondiff/harvest/run.py."""

from reasondiff.app.stage import hydra_app
from reasondiff.tiny import prepare_tiny_world

main = hydra_app("harvest", prepare=prepare_tiny_world)

if __name__ == "__main__":
    main()
