"""Regenerate notebooks/fruits_spark.ipynb (cells kept here so diffs stay readable).

    python notebooks/make_fruits_spark.py
"""

from pathlib import Path

import nbformat as nbf

cells = [
    ("md", """# Fruits-360 on Spark with bovw: the seed pipeline, drop-in

The seed notebooks' pipeline, stage by stage, on PySpark: images → descriptors →
K-Means visual vocabulary → bag of visual words → PCA → classifier → export, with a
timing table. Each stage replaces a cv2 UDF or an MLlib stage with one `bovw.spark`
call that runs bovw's Rust kernels inside `DataFrame.mapInArrow` (whole Arrow batches
per call, no row-by-row Python UDF, no pandas). Each section shows the one-line change.

Runs locally on the Fruits-360 sample shipped with bovw (10 classes, 550 images) by
default; set `MODE = "cloud"` and `DATA`/`OUTPUT` to `s3://` URIs on EMR
(see `deploy/emr/README.md`)."""),
    ("md", "## Parameters"),
    ("code", """import bovw

MODE = "local"                          # "local" (local[2]) or "cloud" (EMR / an existing cluster)
DATA = str(bovw.sample_data_path())     # cloud: "s3://my-bucket/fruits-360/"
OUTPUT = "fruits_spark_out"             # cloud: "s3://my-bucket/bovw-out/"
S3_ENDPOINT = None                      # an S3-compatible server, e.g. "http://127.0.0.1:9000"
MIN_PARTITIONS = 4                      # at least this many partitions (tasks)
NUM_PARTITIONS = 4                      # exactly this many (None: binaryFile's ~32 small files per partition)
METHOD = "sift"                         # "sift" or "orb"
CLASSIFY = True                         # train and evaluate a classifier
K = 50                                  # visual words
MAX_ITER = 20                           # K-Means iterations
VOCABULARY = "sample"                   # "sample" (driver K-Means on a seeded sample) or "lloyd" (distributed)
PCA_VARIANCE = 0.95
SEED = 0"""),
    ("code", """import time
import numpy as np
import pandas as pd
import bovw.spark as bs

timings = {}

def timed(name):
    class T:
        def __enter__(self):
            self.t0 = time.perf_counter()
        def __exit__(self, *exc):
            timings[name] = time.perf_counter() - self.t0
    return T()

if MODE == "local":
    import os
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # one machine: no "loopback address" warning
    spark = bs.session("local[2]", "fruits-bovw", conf={"spark.ui.enabled": "false",
                                                        "spark.sql.shuffle.partitions": str(MIN_PARTITIONS)})
else:
    from pyspark.sql import SparkSession
    spark = SparkSession.builder.appName("fruits-bovw").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
# 100x100 JPEGs are ~5 kB: 1024 images per Arrow batch is ~5 MB (see docs/spark.md)
bs.configure_arrow_batches(spark, records=1024)
print("Spark", spark.version, spark.sparkContext.master, "| bovw", bovw.__version__)"""),
    ("md", """## 1. Images

Seed (works locally; on EMR with EMRFS):
```python
images = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg") \\
    .option("recursiveFileLookup", "true").load(PATH)
images = images.withColumn("label", element_at(split(images["path"], "/"), -2))
```
bovw (same columns, label URL-decoded, split from the folder; `s3://` without hadoop-aws jars):
```python
images = bs.read_images(spark, DATA, min_partitions=MIN_PARTITIONS, num_partitions=NUM_PARTITIONS)
```"""),
    ("code", """with timed("images"):
    images = bs.read_images(spark, DATA, min_partitions=MIN_PARTITIONS, num_partitions=NUM_PARTITIONS,
                            endpoint_url=S3_ENDPOINT).cache()
    n_images = images.count()
print(n_images, "images in", images.rdd.getNumPartitions(), "partitions")
images.groupBy("split").count().show()
from pyspark.sql import functions as F
images.select(F.element_at(F.split("path", "/"), -1).alias("file"), "label", "split", "length").show(3)"""),
    ("md", """## 2. Descriptors

Seed (a Python UDF calling OpenCV on each row):
```python
def extract_sift(content):
    img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_GRAYSCALE)
    _, des = cv2.SIFT_create().detectAndCompute(img, None)
    return des.tolist() if des is not None else []
descriptors = images.withColumn("descriptors", udf(extract_sift, ArrayType(ArrayType(FloatType())))("content"))
```
bovw (a batch per Rust call; bad images give an `error` row instead of failing the task;
each image's descriptors are one `binary` value, `n_keypoints x 128` float32, which the next
stages read without copying; `bs.nested_descriptors(descriptors)` gives the seed's
`array<array<float>>` when you want it):
```python
descriptors = bs.extract_descriptors(images, METHOD)
```"""),
    ("code", """with timed("descriptors"):
    descriptors = bs.extract_descriptors(images, METHOD).cache()
    stats = descriptors.selectExpr("count(*) AS images", "sum(n_keypoints) AS descriptors",
                                   "count(error) AS errors").first()
print(stats)
descriptors.select("label", "n_keypoints", "error").show(3)"""),
    ("md", """## 3. K-Means visual vocabulary

Seed (every descriptor exploded to a row, then MLlib):
```python
flat = descriptors.select(explode("descriptors").alias("d")).rdd.map(lambda r: Vectors.dense(r.d))
model = KMeans.train(flat, K, maxIterations=MAX_ITER, seed=SEED)
```
bovw (training descriptors; `"sample"`: a seeded sample collected to the driver and
`bovw.KMeans`; `"lloyd"`: distributed Lloyd, one Rust call per partition and iteration):
```python
kmeans = bs.fit_vocabulary(descriptors, K, algorithm=VOCABULARY, max_iter=MAX_ITER, random_state=SEED)
```"""),
    ("code", """with timed("kmeans"):
    kmeans = bs.fit_vocabulary(descriptors.where("split = 'Training'"), K, algorithm=VOCABULARY,
                               max_iter=MAX_ITER, random_state=SEED)
vocabulary = np.asarray(kmeans.cluster_centers_, dtype=np.float32)
print("vocabulary", vocabulary.shape, "inertia", round(float(kmeans.inertia_), 1), "iterations", kmeans.n_iter_)"""),
    ("md", """## 4. Bag of visual words

Seed (assign each exploded descriptor with `model.predict`, then group by image and
`CountVectorizer` over the word ids):
```python
words = flat_with_path.withColumn("word", predict_udf("d")).groupBy("path").agg(collect_list("word"))
bow = CountVectorizer(inputCol="words", outputCol="bow", vocabSize=K).fit(words).transform(words)
```
bovw (nearest visual word and counting in one Rust call per batch; `bow` is `array<double>`,
word `j` at index `j`):
```python
bow = bs.bow_histograms(descriptors, vocabulary)
```"""),
    ("code", """with timed("bag of words"):
    bow = bs.bow_histograms(descriptors, vocabulary).where("error IS NULL").cache()
    bow.count()
row = bow.first()
print(row.label, "histogram of", len(row.bow), "words,", int(sum(row.bow)), "descriptors =", row.n_keypoints)"""),
    ("md", """## 5. PCA

Seed (MLlib, on vectors built by a row-by-row `Vectors.dense` UDF):
```python
pca = PCA(k=n, inputCol="bow_vec", outputCol="pca_features").fit(bow)
features = pca.transform(bow)
```
bovw (per-partition `(count, sum, XᵀX)` in one Rust call each, reduced on the driver; the
variance fraction MLlib lacks; the projection in the executors):
```python
pca = bs.fit_pca(bow, PCA_VARIANCE); features = bs.pca_transform(bow, pca)
```"""),
    ("code", """with timed("pca"):
    pca = bs.fit_pca(bow.where("split = 'Training'"), PCA_VARIANCE)
    features = bs.pca_transform(bow, pca).cache()
    features.count()
print(pca.n_components_, "components,", f"{pca.explained_variance_ratio_.sum():.1%}", "of the variance")"""),
    ("md", """## 6. Classification

Spark ML on the same DataFrame: `bs.to_ml_vectors` turns the `array<double>` columns into
ML vectors inside the JVM (`pyspark.ml.functions.array_to_vector`, no Python UDF)."""),
    ("code", """accuracy = None
if CLASSIFY:
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import IndexToString, StringIndexer

    with timed("classification"):
        ml = bs.to_ml_vectors(features, ["pca_features"])
        indexer = StringIndexer(inputCol="label", outputCol="y").fit(ml)
        ml = indexer.transform(ml)
        lr = LogisticRegression(featuresCol="pca_features", labelCol="y", maxIter=100, regParam=0.01)
        model = lr.fit(ml.where("split = 'Training'"))
        predicted = model.transform(ml)
        predicted = IndexToString(inputCol="prediction", outputCol="predicted_label",
                                  labels=indexer.labels).transform(predicted)
        accuracy = MulticlassClassificationEvaluator(labelCol="y", metricName="accuracy").evaluate(
            predicted.where("split = 'Test'"))
    print(f"Test accuracy: {accuracy:.3f} ({len(indexer.labels)} classes)")"""),
    ("md", "The Test split's confusion matrix (150 rows: collected to the driver to draw it)."),
    ("code", """import matplotlib.pyplot as plt
if CLASSIFY:
    from sklearn.metrics import ConfusionMatrixDisplay

    test_rows = predicted.where("split = 'Test'").select("label", "predicted_label").toPandas()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ConfusionMatrixDisplay.from_predictions(test_rows["label"], test_rows["predicted_label"], ax=ax,
                                            xticks_rotation=60, colorbar=False)
    ax.set_title(f"Test split, SIFT bag of words on Spark: accuracy {accuracy:.3f}")
    plt.tight_layout()"""),
    ("md", "## Timings (Durée des opérations)"),
    ("code", """table = pd.DataFrame({"stage": list(timings), "seconds": [round(v, 2) for v in timings.values()]})
fig, ax = plt.subplots(figsize=(7, 2.8))
ax.barh(table["stage"][::-1], table["seconds"][::-1])
ax.set_xlabel("seconds (wall)")
ax.set_title(f"Time per stage, total {table['seconds'].sum():.1f} s ({n_images} images, {spark.sparkContext.master})")
plt.tight_layout()
table.loc[len(table)] = ["total", round(sum(timings.values()), 2)]
table"""),
    ("md", """## 7. Export

Parquet with plain `array<double>` columns, so `pandas.read_parquet` gives NumPy arrays
(ML vectors would come back as structs). `s3://` outputs are written from the executors
with pyarrow (`bs.write_parquet(df, "s3://...", endpoint_url=...)`)."""),
    ("code", """out = OUTPUT.rstrip("/") + "/features.parquet"
export = features.select("path", "label", "split", "n_keypoints", "bow", "pca_features")
if CLASSIFY:
    export = bs.from_ml_vectors(predicted, ["pca_features"]).select(
        "path", "label", "split", "n_keypoints", "bow", "pca_features", "predicted_label")
with timed("export"):
    n_written = bs.write_parquet(export, out, endpoint_url=S3_ENDPOINT)
print(n_written, "rows written to", out)
if not out.startswith("s3://"):
    df = pd.read_parquet(out)
    print(df.shape, type(df["pca_features"].iloc[0]).__name__)"""),
]


def build() -> nbf.NotebookNode:
    """The notebook's cells, without outputs."""
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    return nb


if __name__ == "__main__":
    nbf.write(build(), Path(__file__).with_name("fruits_spark.ipynb"))
