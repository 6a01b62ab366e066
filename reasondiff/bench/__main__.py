"""`python -m reasondiff.bench [+exp=NAME] [key=value ...]` — see conf/bench.yaml and reasondiff/config/bench.py; the recipe is reasondiff/bench/run.py."""

from reasondiff.stage import hydra_app

main = hydra_app("bench")

if __name__ == "__main__":
    main()
