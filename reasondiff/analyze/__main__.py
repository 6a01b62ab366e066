"""`python -m reasondiff.analyze [+exp=NAME] [key=value ...]` — see conf/analyze.yaml and reasondiff/config/analyze.py; the recipe is reasondiff/analyze/run.py."""

from reasondiff.app.stage import hydra_app
from reasondiff.tiny import prepare_tiny_world

main = hydra_app("analyze", prepare=prepare_tiny_world)

if __name__ == "__main__":
    main()
