"""CLIP losses, in open_clip's argument convention: ``logit_scale`` is the EXPONENTIATED scale s.

A model holds the log t (open_clip's ``model.logit_scale``, our reference params' ``"logit_scale"``)
and callers pass ``t.exp()``, so gradients reach the log through autograd's exp.

- ``clip_loss``: open_clip's ClipLoss (one process), the mean of the image->text and text->image
  cross-entropies of S = s I T^T.
- ``weighted_clip_loss``: the same loss of a distribution w over the batch (FLYT's upstream loss).
- ``WeightedClipHead``: ``weighted_clip_loss`` with its derivatives in closed form (the meta-gradient's
  loss head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The standard (open_clip) CLIP loss of normalised features; ``logit_scale`` is s = exp(t)."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def weighted_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    log_weights: torch.Tensor,
) -> torch.Tensor:
    """Contrastive loss of the distribution w = exp(log_weights) over the batch (``logit_scale`` = s):

        S_ij  = s <I_i, T_j>
        L_img = - sum_i w_i [ S_ii - logsumexp_j (S_ij + log w_j) ]        (L_txt: S transposed)
        L     = (L_img + L_txt) / 2

    Weights sit on anchors and on negatives. Weights uniform on a subset M give the CLIP loss of M
    alone minus log|M|; an example of weight 0 (log weight -inf) has no influence at all.
    """
    S = (logit_scale * image_features) @ text_features.T  # scale the (N, d) side, not (N, N)
    w = log_weights.exp()
    positives = S.diagonal()
    log_norm_img = torch.logsumexp(S + log_weights[None, :], dim=1)  # over texts j, per image i
    log_norm_txt = torch.logsumexp(S.T + log_weights[None, :], dim=1)  # over images j, per text i
    loss_img = -(w * (positives - log_norm_img)).sum()
    loss_txt = -(w * (positives - log_norm_txt)).sum()
    return (loss_img + loss_txt) / 2


class WeightedClipHead:
    """``weighted_clip_loss`` as a head over the features e = (I, T, s), with the two derivatives the
    meta-gradient needs in closed form (no autograd graph over the N x N similarity matrix):

        S = s I T^T;  P_ij = w_j e^{S_ij} / sum_l w_l e^{S_il}  (row softmax over texts j)
                      Q_ij = w_i e^{S_ij} / sum_l w_l e^{S_lj}  (column softmax over images i)
        G = dL/dS = (w_i P_ij + w_j Q_ij) / 2 - w_i delta_ij
        dL/dI = s G T,   dL/dT = s G^T I,   dL/ds = <G, I T^T> = <G, S> / s

    and, for a direction u = (u_I, u_T, u_s) of the features, D = dS[u] = s (u_I T^T + I u_T^T) + (u_s / s) S,
    h(log w) = <dL/de, u> = <G, D>, whose gradient with m_i = sum_j P_ij D_ij, n_j = sum_i Q_ij D_ij is

        dh/dlog w_k = ( w_k (m_k - D_kk) + sum_i w_i P_ik (D_ik - m_i)
                      + w_k (n_k - D_kk) + sum_j w_j Q_kj (D_kj - n_j) ) / 2.

    s is the exponentiated scale (open_clip's loss convention); the caller's chain rule through
    s = exp(t) (autograd, forward-mode AD) turns dL/ds and u_s into the log scale's terms.
    Tests check both against autograd and finite differences.
    """

    def __init__(self, image_features, text_features, logit_scale, log_weights):
        self.I, self.T, self.s = image_features.detach(), text_features.detach(), logit_scale.detach()
        self.log_w = log_weights.detach()
        self.w = self.log_w.exp()
        self.S = (self.s * self.I) @ self.T.T
        # (N x N work is memory-bound on a CPU: build each matrix in place, reduce with mat-vecs)
        self.P = self.S + self.log_w[None, :]
        log_norm_img = torch.logsumexp(self.P, dim=1)  # r_i
        self.P.sub_(log_norm_img[:, None]).exp_()
        self.Q = self.S + self.log_w[:, None]
        log_norm_txt = torch.logsumexp(self.Q, dim=0)  # c_j
        self.Q.sub_(log_norm_txt[None, :]).exp_()
        positives = self.S.diagonal()
        self.loss = -(self.w * (positives - log_norm_img)).sum() / 2 - (self.w * (positives - log_norm_txt)).sum() / 2

    def feature_gradients(self):
        """(dL/dI, dL/dT, dL/ds)."""
        G = self.P * (self.w[:, None] / 2)
        G.addcmul_(self.Q, self.w[None, :] / 2)
        G.diagonal().sub_(self.w)
        grad_s = torch.vdot(G.reshape(-1), self.S.reshape(-1)) / self.s
        return (self.s * (G @ self.T), self.s * (G.T @ self.I), grad_s)

    def weight_gradient(self, u) -> torch.Tensor:
        """d/dlog w of < dL/de(e; w), u > for a fixed direction u = (u_I, u_T, u_s) of the features."""
        u_I, u_T, u_s = u
        D = torch.addmm((self.s * u_I) @ self.T.T, self.s * self.I, u_T.T)
        D.add_(self.S, alpha=float(u_s / self.s))
        d = D.diagonal()
        PD, QD = self.P * D, self.Q * D
        m, n = PD.sum(1), QD.sum(0)
        rows = self.w @ PD - (self.w * m) @ self.P  # sum_i w_i P_ik (D_ik - m_i)
        cols = QD @ self.w - self.Q @ (self.w * n)  # sum_j w_j Q_kj (D_kj - n_j)
        return (self.w * (m - d) + rows + self.w * (n - d) + cols) / 2
