"""Constants shared by training, serving and evaluation (same values as the original LLaVA)."""

CONTROLLER_HEART_BEAT_EXPIRATION = 30
WORKER_HEART_BEAT_INTERVAL = 15

LOGDIR = "."

# Label value ignored by the loss, and the placeholder id spliced into input_ids where image
# features go. Neither is a real vocabulary id.
IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200

DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"

# transformers' llava-hf model types (LlavaForConditionalGeneration, LlavaNext..., LlavaOnevision...).
LLAVA_HF_MODEL_TYPES = ("llava", "llava_next", "llava_onevision")
