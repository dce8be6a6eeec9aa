"""LISM: offline local image-sentence pair mining (GOAL, Choi et al., CVPR 2025; https://github.com/PerceptualAI-Lab/GOAL).

`segmenters` proposes regions (plug-ins), `selection` turns them into candidates and matches into
pairs, `scoring` matches sentences to candidates in batched jitted steps, `mine` is the resumable
job writing a `<dataset>_lism` dataset, `python -m goal_jax.lism` its command, `bench` its speed.
"""
