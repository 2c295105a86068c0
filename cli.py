"""`emu-video` command line (subcommands are filled in as the pack grows)."""
import sys


def main(argv=None):
    print("emu-video: no subcommands yet", file=sys.stderr)
    return 2
