#!/usr/bin/env bash
# As a pip user meets the project: build a wheel, install it into a fresh virtualenv, and from a
# folder outside the repository run the main job, a generation against a loopback server and an
# export of the trained model. An editable checkout hides missing package data; this does not.
#   bash .ci/wheel_check.sh            (uses .venv/bin/python to build; python3 for the new venv)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/e5mistral-wheel.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "== building the wheel"
"$repo/.venv/bin/python" -m pip wheel --disable-pip-version-check -q --no-deps -w "$work/dist" "$repo"
wheel=$(ls "$work"/dist/e5mistral-*.whl)
echo "built $(basename "$wheel")"

echo "== installing it into a fresh virtualenv"
"${PYTHON:-python3}" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "${E5MISTRAL_TORCH:-torch==2.13.0}"
"${pip[@]}" install "$wheel"
py="$work/venv/bin/python"

cd "$work"  # outside the repository: only the installed package can be imported
"$py" - <<'PY'
import e5mistral, pathlib
where = pathlib.Path(e5mistral.__file__).resolve()
assert "site-packages" in str(where), f"e5mistral imported from {where}, not from the installed wheel"
print(f"e5mistral {e5mistral.__version__} from {where.parent}")
PY

echo "== the main job, from $work"
"$work/venv/bin/accelerate" launch --config_file "$repo/configs/accelerate/single.yaml" "$repo/scripts/train.py" \
    --config "$repo/configs/demo.yaml" --output_dir "$work/e5-demo" --num_train_epochs 1
test -f "$work/e5-demo/model.safetensors" && test -f "$work/e5-demo/README.md" && test -f "$work/e5-demo/modules.json"

echo "== a generation against a loopback server"
"$py" -m e5mistral.testing serve > "$work/server.url" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/server.url" ] && break; sleep 0.2; done
url=$(head -1 "$work/server.url")
"$py" "$repo/scripts/generate_data.py" --base-url "$url" --model scripted --examples-per-kind 2 --languages en,de \
    --no-progress --output "$work/synthetic"
test -f "$work/synthetic/README.md"
"$py" -c "import datasets, sys; rows = datasets.load_dataset(sys.argv[1], 'sts', split='train'); assert len(rows) > 0, rows; print(f'load_dataset: {len(rows)} sts rows')" "$work/synthetic"

echo "== an export of the trained model"
"$py" "$repo/scripts/push_to_hub.py" model --model "$work/e5-demo" --repo-id me/e5-demo --local-dir "$work/staged"
test -f "$work/staged/README.md" && test -f "$work/staged/model.safetensors"
echo "wheel check passed"
