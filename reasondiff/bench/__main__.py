"""`python -m reasondiff.bench [+exp=NAME] [key=value ...]` — see conf/bench.yaml and reasondiff/config/bench.py; the recipe is reasondiff/bench/run.py."""

from reasondiff.app.stage import hydra_app
from reasondiff.tiny import prepare_tiny_world

main = hydra_app("bench", prepare=prepare_tiny_world)

if __name__ == "__main__":
    main()
