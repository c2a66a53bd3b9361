"""Train an E5-mistral embedding model: ``e5mistral.cli.train`` (its docstring has the commands).

    python scripts/train.py --config configs/demo.yaml
    accelerate launch --config_file configs/accelerate/ddp.yaml scripts/train.py --config configs/demo.yaml
"""

from e5mistral.cli.train import command

if __name__ == "__main__":
    command()  # main(), then an exit that a multi-process run's threads cannot abort
