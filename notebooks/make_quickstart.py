"""Regenerate notebooks/quickstart.ipynb (cells kept here so diffs stay readable).

    python notebooks/make_quickstart.py
"""

from pathlib import Path

import nbformat as nbf

cells = [
    ("md", """# bovw quickstart: a bag-of-visual-words classifier on Fruits-360

This notebook runs the classic pipeline step by step on the real Fruits-360 sample
shipped with bovw (10 classes, 40 training and 15 test images each; CC BY-SA 4.0,
Muresan & Oltean 2018):

1. read the images (the columns of Spark's `binaryFile` source, plus label and split);
2. decode to 8-bit gray and extract SIFT descriptors (Rust, all cores);
3. fit a K-Means visual vocabulary;
4. one bag-of-visual-words histogram per image;
5. PCA keeping 95 % of the variance;
6. a scikit-learn classifier, evaluated on the Test split.

Set `DATA` to a full copy (e.g. `../shared/fruits-360`) to run it on more images."""),
    ("code", """import time
import numpy as np
import matplotlib
import matplotlib.pyplot as plt
import bovw

DATA = bovw.sample_data_path()   # or "../../shared/fruits-360"
K = 50                           # visual words
SEED = 0
timings = {}
print("bovw", bovw.__version__)"""),
    ("md", "## 1. Images\n`bovw.read_images` returns a pyarrow Table: `path`, `modificationTime`, `length`, `content`, `label`, `split`."),
    ("code", """t0 = time.perf_counter()
table = bovw.read_images(DATA)
timings["read"] = time.perf_counter() - t0
print(table.num_rows, "images,", len(set(table.column("label").to_pylist())), "classes")
rows = table.select(["path", "length", "label", "split"]).slice(0, 3).to_pandas()
rows["path"] = rows["path"].str.split("/").str[-3:].str.join("/")  # shown relative to DATA
rows"""),
    ("md", "## 2. Keypoints and descriptors\nOne image first, with the OpenCV-style API, then the whole table in one parallel Rust call."),
    ("code", """sift = bovw.SIFT()
fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
labels = table.column("label").to_pylist()
firsts = [labels.index(c) for c in sorted(set(labels))[:4]]
for ax, i in zip(axes, firsts):
    gray = bovw.decode_gray(table.column("content")[i].as_py())
    kp, desc = sift.detect_and_compute(gray)
    ax.imshow(gray, cmap="gray")
    for x, y, s, a in zip(kp["x"], kp["y"], kp["size"], kp["angle"]):
        ax.add_patch(plt.Circle((x, y), s / 2, fill=False, color="yellow", lw=0.7))
        t = np.deg2rad(a)
        ax.plot([x, x + s / 2 * np.cos(t)], [y, y + s / 2 * np.sin(t)], color="red", lw=0.7)
    ax.set_title(f"{labels[i]}\\n{len(kp)} keypoints", fontsize=9)
    ax.axis("off")
plt.tight_layout()"""),
    ("code", """t0 = time.perf_counter()
feats = bovw.extract_descriptors(table, method="sift")
timings["descriptors"] = time.perf_counter() - t0
print(feats.schema)
n_kp = np.array(feats.column("n_keypoints").to_pylist(), dtype=float)
errors = [e for e in feats.column("error").to_pylist() if e]
print(f"{np.nansum(n_kp):.0f} descriptors, {np.nanmean(n_kp):.1f} per image, {len(errors)} errors")"""),
    ("md", "## 3. Visual vocabulary (K-Means on the training descriptors)"),
    ("code", """X, offsets = bovw.descriptor_matrix(feats.column("descriptors"))  # (n_descriptors, 128), per-image offsets
split = np.array(feats.column("split").to_pylist())
train_rows = np.flatnonzero(split == "Training")
X_train = np.concatenate([X[offsets[i]:offsets[i + 1]] for i in train_rows])
t0 = time.perf_counter()
kmeans = bovw.KMeans(n_clusters=K, random_state=SEED, n_init=1).fit(X_train)
timings["kmeans"] = time.perf_counter() - t0
print(f"vocabulary {kmeans.cluster_centers_.shape}, inertia {kmeans.inertia_:.4g}, {kmeans.n_iter_} iterations")"""),
    ("md", "## 4. Bag of visual words\nEvery descriptor gets its nearest visual word; each image becomes a histogram of words. An image without keypoints gets an all-zero row."),
    ("code", """t0 = time.perf_counter()
words = kmeans.predict(X)
H = bovw.bow_histograms(words, offsets, n_words=K)
timings["bow"] = time.perf_counter() - t0
print(H.shape, H.dtype, "row sums = keypoints:", bool(np.allclose(H.sum(1), np.nan_to_num(n_kp))))"""),
    ("md", "## 5. PCA keeping 95 % of the variance"),
    ("code", """train, test = split == "Training", split == "Test"
t0 = time.perf_counter()
pca = bovw.PCA(n_components=0.95).fit(H[train])
Z = pca.transform(H)
timings["pca"] = time.perf_counter() - t0
full = bovw.PCA().fit(H[train])
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(np.arange(1, len(full.explained_variance_ratio_) + 1), np.cumsum(full.explained_variance_ratio_), marker=".")
ax.axhline(0.95, color="gray", ls="--", lw=0.8)
ax.axvline(pca.n_components_, color="red", lw=0.8)
ax.set_xlabel("components"); ax.set_ylabel("cumulative explained variance")
ax.set_title(f"PCA: {pca.n_components_} components keep 95 % of the variance")
plt.tight_layout()"""),
    ("md", "## 6. Classifier"),
    ("code", """from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

y = np.array(feats.column("label").to_pylist())
t0 = time.perf_counter()
clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(Z[train], y[train])
accuracy = accuracy_score(y[test], clf.predict(Z[test]))
timings["classifier"] = time.perf_counter() - t0
print(f"accuracy on the Test split: {accuracy:.3f} ({test.sum()} images, {len(set(y))} classes)")"""),
    ("md", """## 7. Colour and dense descriptors

Sparse SIFT finds few keypoints on 100 x 100 fruit and ignores colour. The field's answer:
dense PHOW descriptors on HSV (VLFeat's `vl_phow`) encoded as Fisher vectors with a spatial
pyramid, and a colour histogram (HSV 18 x 4 x 4, white background masked). Each channel is
L2-normalised, then concatenated for a linear classifier (`bovw run --recipe phow+fisher` runs
the same recipe; `docs/descriptors.md` says which descriptor to pick for what)."""),
    ("code", """t0 = time.perf_counter()
phow = bovw.extract_descriptors(table, method="phow", color="hsv", step=4)   # (n, 384) uint8 per image
P, p_off = bovw.descriptor_matrix(phow.column("descriptors"))
P_train = np.concatenate([P[p_off[i]:p_off[i + 1]] for i in train_rows]).astype(np.float32)
rng = np.random.default_rng(SEED)
sample = P_train[rng.choice(len(P_train), min(50_000, len(P_train)), replace=False)]
pca64 = bovw.PCA(n_components=64, random_state=SEED).fit(sample)         # decorrelate before the GMM
fv = bovw.FisherVector(n_components=16, spatial_pyramid=(1, 2), random_state=SEED).fit(pca64.transform(sample))
K_xy, _ = bovw.descriptor_matrix(phow.column("keypoints"))
sizes = np.stack([phow.column("image_width").to_numpy(), phow.column("image_height").to_numpy()], axis=1)
F_fv = fv.transform(pca64.transform(P.astype(np.float32)), p_off, K_xy[:, :2], sizes)
color = bovw.extract_descriptors(table, method="color")                     # one 288-bin histogram per image
C, _ = bovw.descriptor_matrix(color.column("descriptors"))
timings["phow + fisher + colour"] = time.perf_counter() - t0

def l2(M):
    return M / np.maximum(np.linalg.norm(M, axis=1, keepdims=True), 1e-12)

F_all = np.hstack([l2(F_fv), l2(C)])
print(f"PHOW: {len(P):,} descriptors; Fisher vectors {F_fv.shape}; colour {C.shape}")
for name, F in [("Fisher vectors", F_fv), ("colour histogram", C), ("both", F_all)]:
    clf2 = LogisticRegression(C=100, max_iter=3000).fit(l2(F[train]), y[train])
    print(f"{name:<18} Test accuracy {accuracy_score(y[test], clf2.predict(l2(F[test]))):.3f}")"""),
    ("md", "## Stage timings"),
    ("code", """for stage, s in timings.items():
    print(f"{stage:<12} {s:8.3f} s")"""),
]


def build() -> nbf.NotebookNode:
    """The notebook's cells, without outputs."""
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    return nb


if __name__ == "__main__":
    nbf.write(build(), Path(__file__).with_name("quickstart.ipynb"))
