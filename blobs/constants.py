"""Every Redis key and file name of the blob store, in one place (the functions that change
them: blobs/blobs.lua; the store's rules: blobs/store.py).

A holding says an account may refer to a blob by digest until its expiry; the account's
quota counts the blobs it holds, those its tasks pin (a task may outlive the holding) and
its unfinished uploads. A pin says a task uses a blob (the garbage collector keeps it while
the task lives). Digests are spelled ``sha256:<hex>``.
"""

BLOBS = "hm:blobs"  # hash: digest -> size, every complete blob in data/
HOLDINGS = "hm:blob-holdings:{account}"  # zset: digest -> expiry (unix time) of the holding
HOLDERS = "hm:blob-holders:{digest}"  # zset: account -> expiry (HOLDINGS seen from the blob)
# hash: id of a task that uses the blob -> "<pin time> <the task's owner>"
PINS = "hm:blob-pinned:{digest}"
# hash: digest -> how many of the account's tasks pin it (its quota counts them meanwhile)
ACCOUNT_PINS = "hm:blob-account-pins:{account}"
UPLOADS = "hm:blob-uploads"  # zset: upload id -> last touched (unfinished uploads only)
UPLOAD = "hm:blob-upload:{id}"  # hash: see UploadRecord in blobs/index.py
ACCOUNT_UPLOADS = "hm:blob-account-uploads:{account}"  # hash: upload id -> announced size
# hash: "<digest> <size>" -> upload id, an account's unfinished upload to resume
ACCOUNT_RESUME = "hm:blob-account-resume:{account}"
# hash: "<attempt>" -> the committed result's digest, "upload:<attempt>" -> its upload id,
# "released" -> the result digest the ended task kept ("" none; set by the release)
TASK_RESULTS = "hm:blob-results:{task}"

RESULT_HOLDER = "result:{task}"  # the account a task's results are held by
INPUT, RESULT = "input", "result"  # kinds of uploads

# Files under the store's root directory.
DATA_DIR = "data"  # data/<hex[:2]>/<hex>: complete, verified, read-only
UPLOADS_DIR = "uploads"  # uploads/<upload id>: partial
LOCK_FILE = ".lock"  # flock: commits and garbage deletions, across the hub's processes
