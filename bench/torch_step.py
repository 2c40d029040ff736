#!/usr/bin/python3
"""PyTorch CPU twin of pipe's grid model training step, for bench/train.ts.

Same network (3x3 'same' convs + ReLU, 2x2 max-pool after each block with ceil_mode=True so
odd sides pool like TF's SAME, 1x1 head to 14 channels per cell), same loss terms as
stages/lib/grid-net.ts gridLoss (default settings: exp sizes clipped at log(1000) cells,
relu+softmax classes), Adam lr 0.0008, synthetic inputs with one face per image.

usage: /usr/bin/python3 bench/torch_step.py '{"threads":1,"cases":[[250,32]],"warmup":2,"steps":5,"filters":[[10],...]}'
       /usr/bin/python3 bench/torch_step.py --serve THREADS   (requests as JSON lines on stdin)
Prints one JSON object per case: {"size","batch","threads","median_s","img_per_s","steps_s":[...]}.
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

CHANNELS = 14  # conf, cy, cx, h, w, 2 gender, 7 age
MAX_CELLS = 1000.0


class GridNet(torch.nn.Module):
    def __init__(self, filters):
        super().__init__()
        layers = []
        cin = 3
        for block in filters:
            for f in block:
                conv = torch.nn.Conv2d(cin, f, 3, padding='same')
                # tfjs uses glorot-uniform kernels and zero biases
                torch.nn.init.xavier_uniform_(conv.weight)
                torch.nn.init.zeros_(conv.bias)
                layers += [conv, torch.nn.ReLU()]
                cin = f
            layers.append(torch.nn.MaxPool2d(2, 2, ceil_mode=True))
        head = torch.nn.Conv2d(cin, CHANNELS, 1)
        torch.nn.init.xavier_uniform_(head.weight)
        torch.nn.init.zeros_(head.bias)
        layers.append(head)
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def grid_loss(raw, t):
    """raw, t: [b, 14, g, g] (NCHW). The terms of gridLoss, weights 1."""
    mask = t[:, 0:1]
    n_obj = mask.sum().clamp(min=1)
    n_empty = (1 - mask).sum().clamp(min=1)
    conf = raw[:, 0:1]
    conf_obj = (mask * F.softplus(-conf)).sum() / n_obj
    conf_noobj = ((1 - mask) * F.softplus(conf)).sum() / n_empty
    centre = torch.sigmoid(raw[:, 1:3])
    center = (mask * (centre - t[:, 1:3]).square()).sum() / (n_obj * 2)
    size_act = torch.exp(torch.clamp(raw[:, 3:5], max=math.log(MAX_CELLS)))
    size = (mask * (size_act - t[:, 3:5]).square()).sum() / (n_obj * 2)

    def ce(start, n):
        logits = F.relu(raw[:, start:start + n])
        return -(F.log_softmax(logits, dim=1) * t[:, start:start + n]).sum(1, keepdim=True)

    gender = (mask * ce(5, 2)).sum() / n_obj
    age = (mask * ce(7, 7)).sum() / n_obj
    return conf_obj + conf_noobj + center + size + gender + age


def make_batch(size, batch, grid, gen):
    x = torch.rand(batch, 3, size, size, generator=gen)
    t = torch.zeros(batch, CHANNELS, grid, grid)
    for i in range(batch):
        # one face per image: a random cell, offsets, a size of 1-6 cells, gender, age
        r = int(torch.randint(grid, (1,), generator=gen))
        c = int(torch.randint(grid, (1,), generator=gen))
        t[i, 0, r, c] = 1
        t[i, 1:3, r, c] = torch.rand(2, generator=gen)
        t[i, 3:5, r, c] = 1 + 5 * torch.rand(2, generator=gen)
        t[i, 5 + int(torch.randint(2, (1,), generator=gen)), r, c] = 1
        t[i, 7 + int(torch.randint(7, (1,), generator=gen)), r, c] = 1
    return x, t


def bench_case(filters, size, batch, warmup, steps):
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(size * 1000 + batch)
    model = GridNet(filters)
    grid = size
    for _ in filters:
        grid = -(-grid // 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.0008, eps=1e-7)  # tfjs Adam's epsilon
    x, t = make_batch(size, batch, grid, gen)
    out_shape = tuple(model(x).shape)
    if out_shape != (batch, CHANNELS, grid, grid):
        raise SystemExit(f'torch_step.py: output shape {out_shape}, expected {(batch, CHANNELS, grid, grid)}')
    times = []
    loss_value = float('nan')
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = grid_loss(model(x), t)
        loss.backward()
        opt.step()
        loss_value = loss.item()  # like pipe's trainLoop, read the loss every step
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    if not math.isfinite(loss_value):
        raise SystemExit(f'torch_step.py: loss is {loss_value} at {size}x{size} batch {batch}')
    s = sorted(times)
    med = s[len(s) // 2]
    return {'size': size, 'batch': batch, 'threads': torch.get_num_threads(), 'median_s': med,
            'img_per_s': batch / med, 'steps_s': times, 'loss': loss_value}


def main():
    """One-shot: argv[1] is a JSON config with "cases". Serve: --serve THREADS, then one JSON
    request per stdin line ({"size", "batch", "warmup", "steps", "filters"}), one JSON line back."""
    if len(sys.argv) == 3 and sys.argv[1] == '--serve':
        torch.set_num_threads(int(sys.argv[2]))
        print(json.dumps({'ready': True, 'threads': torch.get_num_threads(), 'torch': torch.__version__}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            r = bench_case(req['filters'], int(req['size']), int(req['batch']), int(req['warmup']), int(req['steps']))
            r['torch'] = torch.__version__
            print(json.dumps(r), flush=True)
        return
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(int(cfg['threads']))
    for size, batch in cfg['cases']:
        r = bench_case(cfg['filters'], int(size), int(batch), int(cfg.get('warmup', 2)), int(cfg.get('steps', 5)))
        r['torch'] = torch.__version__
        print(json.dumps(r), flush=True)


if __name__ == '__main__':
    main()
