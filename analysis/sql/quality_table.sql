-- The seeds' quality table: Cache | PPL | KL vs baseline | Top-1 agreement, per model and n_ctx.
SELECT q.model_name, q.n_ctx, q.baseline, q.config, q.type_k, q.type_v,
       q.ppl, q.ppl_unc, q.kld_mean, q.kld_unc, q.kld_p99, q.same_top_p, q.same_top_unc,
       q.n_tokens, q.flags
FROM quality q
ORDER BY q.model_name, q.n_ctx;
