#!/usr/bin/env bash
# Builds, without a container engine or a registry, the two images the local node runs
# (scripts/node.sh imports them into containerd):
#
#   scripts/image.sh [BINARY]
#
#   $ENS_CACHE/images/ens-operator.tar   ghcr.io/ens-operator/ens-operator:<chart appVersion>,
#       from BINARY (default: the release build, made here): the Dockerfile's final stage's
#       promises (user 65532:65532, entrypoint /ens-operator, no shell, read-only root works),
#       plus the shared libraries the gnu binary needs (no musl target here; distroless `cc` does
#       the same).
#   $ENS_CACHE/images/pause.tar          the pod sandbox image: a static C program (gcc -static).
#
# Each is a docker-archive (`docker save` layout: one layer tar, a config JSON with its diff_id,
# manifest.json), rebuilt only when its input changed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
out=$ENS_CACHE/images
mkdir -p "$out"

app_version=$(awk -F'"' '/^appVersion:/ {print $2}' charts/ens-operator/Chart.yaml)
IMAGE=ghcr.io/ens-operator/ens-operator:$app_version
PAUSE=localhost/ens-operator/pause:3.10

# archive OUT TAG USER ENTRYPOINT_JSON FILE... : FILE is SRC=DEST[:MODE]; DEST ending in / is a dir
archive() {
  local dest=$1 tag=$2 user=$3 entrypoint=$4; shift 4
  python3 - "$dest" "$tag" "$user" "$entrypoint" "$@" <<'PY'
import hashlib, io, json, os, sys, tarfile
dest, tag, user, entrypoint, *files = sys.argv[1:]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as t:
    dirs = set()
    def mkdir(path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in dirs:
                dirs.add(d)
                info = tarfile.TarInfo(d); info.type = tarfile.DIRTYPE
                info.mode = mode if i == len(parts) else 0o755
                t.addfile(info)
    for spec in files:
        src, _, target = spec.partition("=")
        target, _, mode = target.partition(":")
        if target.endswith("/"):
            mkdir(target, int(mode, 8) if mode else 0o755); continue
        mkdir(os.path.dirname(target))
        data = open(src, "rb").read() if src else b""
        info = tarfile.TarInfo(target.lstrip("/")); info.size = len(data)
        info.mode = int(mode, 8) if mode else 0o644
        t.addfile(info, io.BytesIO(data))
layer = layer.getvalue()
diff_id = hashlib.sha256(layer).hexdigest()
config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"User": user, "Entrypoint": json.loads(entrypoint), "WorkingDir": "/",
               "Env": ["PATH=/"], "Labels": {"org.opencontainers.image.source": "scripts/image.sh"}},
    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
    "history": [{"created_by": "scripts/image.sh"}],
}, sort_keys=True).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": config_name, "RepoTags": [tag],
                        "Layers": [f"{diff_id}/layer.tar"]}]).encode()
tmp = dest + ".tmp"
with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as t:
    for name, data in [(f"{diff_id}/layer.tar", layer), (config_name, config),
                       ("manifest.json", manifest)]:
        info = tarfile.TarInfo(name); info.size = len(data); info.mode = 0o644
        t.addfile(info, io.BytesIO(data))
os.replace(tmp, dest)
PY
}

build_pause() {
  local src=scripts/pause.c
  if [ -f "$out/pause.tar" ] && cmp -s "$src" "$out/pause.c"; then return; fi
  command -v gcc >/dev/null || die "gcc is needed for the pause image (apt-get install gcc libc6-dev)"
  gcc -static -O2 -o "$out/pause" "$src"
  archive "$out/pause.tar" "$PAUSE" 65535:65535 '["/pause"]' "$out/pause=/pause:755"
  cp "$src" "$out/pause.c"
  log "image $PAUSE: $out/pause.tar"
}

build_operator() {
  local bin=${1:-}
  if [ -z "$bin" ]; then
    cargo build --release --locked --bin ens-operator >&2
    bin=$CARGO_TARGET_DIR/release/ens-operator
  fi
  [ -x "$bin" ] || die "$bin is not an executable"
  local key; key=$( (sha256sum "$bin"; echo "$IMAGE"; sha256sum scripts/image.sh) | sha256sum | cut -c1-16)
  if [ -f "$out/ens-operator.tar" ] && [ "$(cat "$out/ens-operator.key" 2>/dev/null)" = "$key" ]; then return; fi
  # The dynamic loader and the libraries ldd lists, at the paths the binary looks them up by.
  local files=("$bin=/ens-operator:755") lib
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do files+=("$(readlink -f "$lib")=$lib:755"); done
  [ -f /etc/ssl/certs/ca-certificates.crt ] &&
    files+=("/etc/ssl/certs/ca-certificates.crt=/etc/ssl/certs/ca-certificates.crt")
  local etc; etc=$(mktemp -d)
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$etc/group"
  files+=("$etc/passwd=/etc/passwd" "$etc/group=/etc/group" "=/tmp/:1777")
  archive "$out/ens-operator.tar" "$IMAGE" 65532:65532 '["/ens-operator"]' "${files[@]}"
  rm -rf "$etc"
  echo "$key" >"$out/ens-operator.key"
  echo "$IMAGE" >"$out/ens-operator.tag"
  log "image $IMAGE: $out/ens-operator.tar (from $bin)"
}

build_pause
build_operator "${1:-}"
