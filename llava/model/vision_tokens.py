"""The image tokens of the original LLaVA: ``<im_patch>``, ``<im_start>`` / ``<im_end>`` added to the
tokenizer and the embeddings (a mixin of ``LlavaMetaForCausalLM``, llava.model.llava_arch)."""

from __future__ import annotations

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN

from .checkpoint import load_tensor_file


class VisionTokens:
    """``initialize_vision_tokenizer`` of a LLaVA model."""

    def initialize_vision_tokenizer(
        self,
        tokenizer,
        *,
        mm_use_im_start_end: bool = False,
        mm_use_im_patch_token: bool = False,
        pretrained_adapter: str | None = None,
    ) -> bool:
        """Add ``<im_patch>`` / ``<im_start>`` ``<im_end>`` as the original does and size the embeddings.

        The new ``<im_start>``/``<im_end>`` rows start at the mean of the others, then from stage 1's
        ``model.embed_tokens.weight`` when ``pretrained_adapter`` (its mm_projector.bin) is given.
        Returns True when it added ``<im_start>``/``<im_end>``: then their input embeddings must learn
        (the projector stage trains the input embeddings; the caller sets that, see llava.train.freeze).
        """
        if mm_use_im_patch_token:
            tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
            self._fit_embeddings(len(tokenizer))
        if not mm_use_im_start_end:
            return False
        added = tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
        self._fit_embeddings(len(tokenizer))
        new_ids = tokenizer.convert_tokens_to_ids([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN])
        inp, out = self.get_input_embeddings().weight.data, self.get_output_embeddings().weight.data
        if added:
            first = min(new_ids)  # the rows before the added tokens
            inp[new_ids] = inp[:first].mean(dim=0, keepdim=True)
            out[new_ids] = out[:first].mean(dim=0, keepdim=True)
        if pretrained_adapter:
            stored = load_tensor_file(pretrained_adapter).get("model.embed_tokens.weight")
            if stored is None:
                raise ValueError(
                    f"{pretrained_adapter} has no model.embed_tokens.weight for the <im_start>/<im_end> "
                    "tokens"
                )
            if stored.shape == inp.shape:
                inp[new_ids] = stored[new_ids].to(inp)
            elif stored.shape[0] == len(new_ids):
                inp[new_ids] = stored.to(inp)
            else:
                raise ValueError(
                    f"embed_tokens in {pretrained_adapter} has shape {tuple(stored.shape)}; expected "
                    f"{tuple(inp.shape)} or {len(new_ids)} rows (the added tokens)"
                )
        return True

    def _fit_embeddings(self, vocab: int) -> None:
        if vocab > self.get_input_embeddings().weight.shape[0]:
            self.resize_token_embeddings(vocab)
