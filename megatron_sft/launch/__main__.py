"""`python -m megatron_sft.launch SCRIPT MODEL`: plan, print the settings block, then exec the command."""

from megatron_sft.launch.main import main

if __name__ == "__main__":
    main()
