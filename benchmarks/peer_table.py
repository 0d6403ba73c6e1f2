"""The README's table against diffusers' Diffusion-DPO SDXL script (the peer), tiny and mini SDXL.

    python benchmarks/peer_table.py --peer-script ~/diffusers/examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py

The script comes from your diffusers checkout (install the requirements.txt beside it); nothing
of it is kept here. See ``diffalign/benchmarks/peer.py`` and ``diffalign/benchmarks/peer_table.py``.
"""

from diffalign.benchmarks.peer_table import table_main

if __name__ == "__main__":
    raise SystemExit(table_main())
