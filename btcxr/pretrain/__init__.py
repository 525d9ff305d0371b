"""Stage 1: self-supervised pre-training of a backbone (the paper's Barlow Twins; VICReg, SimCLR and BYOL
through lightly), and the supervised positive control, on one set of data, views, optimizer and run engine.

run.py             pretrain(cfg, out_dir, resume=False) -> Path of backbone.pth; dispatch on `method`
common.py          LARS and its two schedules, the resume check, the checkpoint cadence, backbone.pth
config.py          PretrainConfig: every knob, defaults = the paper's recipe
data.py            seeded per-image views, per-epoch sharded sampler, DataLoader
views.py           the paper's and the radiograph view policies (loader side, torchvision v2)
batched_views.py   the same policies batched on the device (views.on_gpu)
lars.py            LARS optimizer
barlow_twins/      model (backbone + projector + affine-free BN), loss, correlation heatmaps, the loop
supervised.py      the same backbone trained with the NIH labels (the benchmark's positive control)
two_view.py        the loop of the lightly methods (btcxr[methods]): the Barlow Twins loop with their model and loss
vicreg.py          VICReg: projector and loss from lightly
simclr.py          SimCLR: projection head and NT-Xent from lightly
byol.py            BYOL: online and target networks, predictor, loss and momentum update from lightly
"""
