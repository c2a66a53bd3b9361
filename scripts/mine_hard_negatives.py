r"""Mine hard negatives for (query, positive) pairs: ``e5mistral.cli.mine`` (its docstring has the details).

    python scripts/mine_hard_negatives.py --model out/my-e5 --pairs data/nq_pairs.jsonl \
        --instruction question_answering --task nq --language en --output data/nq_mined.jsonl
"""

import sys

from e5mistral.cli.mine import main

if __name__ == "__main__":
    sys.exit(main())
