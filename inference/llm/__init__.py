"""The LLM engine and the LLM containers' APIs (TGI, LMI, OpenAI), without HTTP.

- ``generation``: the request, events, limits and error shared by everything below (no torch);
- ``scheduler``: what runs next (no torch);
- ``engine``: continuous batching over a ``transformers`` causal LM (torch, imported by this module only);
- ``api_tgi``, ``api_openai``, ``api_lmi``: each container's request schemas in, response bytes out
  (no torch);
- ``chat_template``: finding and rendering a model folder's chat template (jinja2).
"""
