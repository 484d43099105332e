"""A style loss of your own: match the mean response of each channel.

E = 1/(2N) sum_i (mu_i - mu^_i)^2,  mu_i = (1/M) sum_k F_ik  (the artwork's: mu^_i)
dE/dF_ik = (mu_i - mu^_i) / (N M)

Check its gradient, then use it (from the folder that holds this file, or with it on PYTHONPATH):

    nstlite gradcheck --loss mean_loss:MeanLoss --select mean_loss
    nstlite stylize --content photo.jpg --style art.jpg --style-loss mean_loss:MeanLoss --style-weight 100
"""
from nstlite.backend import get_array_module
from nstlite.losses import StyleLoss


class MeanLoss(StyleLoss):
    # both statistics are sums over positions: exact under tiles, rescaled across image sizes
    position_sums = ("sum", "positions")

    def statistics(self, F):
        return {"sum": F.reshape(F.shape[0], -1).sum(axis=1), "positions": F[0].size}

    def value(self, stats, target):
        d = stats["sum"] / stats["positions"] - target["sum"] / target["positions"]
        return (d * d).sum() / (2 * d.size)

    def gradient(self, F, stats, target):
        xp = get_array_module(F)
        d = stats["sum"] / stats["positions"] - target["sum"] / target["positions"]
        return xp.broadcast_to((d / (d.size * stats["positions"]))[:, None, None], F.shape).copy()
