#!/usr/bin/env bash
# fuzz/campaign.sh (--hours H | --minutes M) [--jobs N] [--engine libfuzzer|afl|both] --out DIR
# Unattended fuzzing of every target; see fuzz/campaign.py.
exec python3 "$(dirname "$0")/campaign.py" "$@"
