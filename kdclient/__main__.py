"""`python -m kdclient ...` is the `kd` command."""

from kdclient.cli import main

if __name__ == "__main__":
    main()
