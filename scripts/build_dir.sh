# Sourced by the scripts: the LibTorch to build against (KOSMOSG_LIBTORCH) and its build folder.
#   pip (default): the current `torch` package (2.x) in a virtual environment, built into build-pip/;
#     measured faster here (a whole 512x512 generation 1.24x; the shapes recipe's t2i, align and
#     instruct stages 1.2-1.4x).
#   system: Debian's LibTorch 1.13 (CPU), built into build/.
# KOSMOSG_BUILD, when set, names another build folder (e.g. one configured with other options).
KOSMOSG_LIBTORCH=${KOSMOSG_LIBTORCH:-pip}
case "$KOSMOSG_LIBTORCH" in
  pip) default_build=build-pip ;;
  system) default_build=build ;;
  *) echo "KOSMOSG_LIBTORCH is '$KOSMOSG_LIBTORCH', expected pip or system" >&2; exit 2 ;;
esac
KOSMOSG_BUILD=${KOSMOSG_BUILD:-$default_build}
