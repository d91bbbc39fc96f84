"""The distillation student: embedding -> GRU -> linear, over the teacher tokenizer's vocabulary.

The features are the GRU's state at each sentence's last real token, so padding never reaches
them: a padded sentence and the same sentence unpadded give the same logits. One direction:
run over the padded batch and gather at the last real position (right padding comes after it,
so it cannot change it); with length-grouped batches that is faster on the CPU than packing
(bench/train_throughput.py). Bidirectional: packed by true lengths, so that the backward
direction starts at the last real token."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class GRUStudent(nn.Module):
    def __init__(self, *, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, pad_token_id: int = 0,
                 num_labels: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_token_id)
        self.gru = nn.GRU(embed_dim, hidden_size, num_layers=num_layers, batch_first=True,
                          bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_labels)
        self.directions = 2 if bidirectional else 1

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, L] (right padding) -> logits [B, num_labels]."""
        lengths = attention_mask.sum(1).clamp(min=1)
        if self.directions == 1:
            out, _ = self.gru(self.embed(input_ids))  # [B, L, H]
            features = out[torch.arange(len(lengths), device=out.device), lengths - 1]
            return self.head(self.drop(features))  # [B, num_labels]
        packed = pack_padded_sequence(self.embed(input_ids), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, h_n = self.gru(packed)  # [num_layers * directions, B, H], at each true end
        last = h_n[-self.directions:]  # the top layer, both directions
        features = torch.cat(list(last), dim=-1)  # [B, H * directions]
        return self.head(self.drop(features))
