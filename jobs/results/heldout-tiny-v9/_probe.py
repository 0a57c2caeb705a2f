"""The probes' shared training step: one pix2pix step (batch 4, L1 weight 100, GAN weight 1, as the
tiny preset's concept training) on pairs drawn with `gen`."""

import torch

from weightgen.gan.train import _gan_step, to_model


def probe_step(g, d, opt_g, opt_d, xs, ys, tok, msk, gen: torch.Generator) -> None:
    """xs, ys (n,3,H,W) in [0,1]; tok (1,L,Dt), msk (1,L)."""
    idx = torch.randint(0, xs.shape[0], (4,), generator=gen)
    x, y = to_model(xs[idx]), to_model(ys[idx])
    _gan_step(g, d, opt_g, opt_d, x, y, tok.expand(4, -1, -1), msk.expand(4, -1), 100.0, 1.0)


def probe_setup(pre, params, lr: float, concept, tokens, mask):
    """A fresh discriminator, both Adam optimisers (pix2pix betas) and the concept's pairs:
    (d, opt_g, opt_d, (xs, ys), (ex, ey), tok (1,L,Dt), msk (1,L))."""
    from weightgen.eval.newconcept import eval_pairs, train_pairs
    from weightgen.gan.models import PatchDiscriminator

    d = PatchDiscriminator(pre.gan.disc_ndf, pre.gan.disc_layers)
    opt_g = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=pre.concept.disc_lr, betas=(0.5, 0.999))
    return (
        d,
        opt_g,
        opt_d,
        train_pairs(concept, pre),
        eval_pairs(concept, pre),
        tokens[None],
        mask[None],
    )
