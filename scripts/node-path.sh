# Sourced by the scripts that run Node: puts the Node that scripts/setup.sh installed into
# .tools/node (where the system's was older than 20) first on PATH.
if [ -x .tools/node/node_modules/.bin/node ]; then
    PATH="$PWD/.tools/node/node_modules/.bin:$PATH"
    export PATH
fi
