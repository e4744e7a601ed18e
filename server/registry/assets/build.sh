#!/usr/bin/env bash
# Refresh the dashboard's vendored front-end files from the versions pinned in package-lock.json.
# Only maintainers run this (needs npm and the registry); the output in ../static/vendor is committed.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
out=../static/vendor
mkdir -p "$out"
cp node_modules/htmx.org/dist/htmx.min.js "$out/htmx.min.js"
cp node_modules/htmx.org/LICENSE "$out/htmx.LICENSE.txt"
cp node_modules/chart.js/dist/chart.umd.min.js "$out/chart.umd.min.js"
cp node_modules/chart.js/LICENSE.md "$out/chart.js.LICENSE.md"
{
  echo "Vendored by assets/build.sh from package-lock.json:"
  node -e 'const l=require("./package-lock.json").packages; for (const k of ["node_modules/htmx.org","node_modules/chart.js"]) console.log(`  ${k.slice(13)} ${l[k].version} ${l[k].integrity}`)'
} > "$out/VERSIONS.txt"
rm -rf node_modules
ls -l "$out"
