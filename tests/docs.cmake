# tests/docs.cmake - docs/attention.md, the page that explains attention with links into the
# code (pytest, test venv, against what is built here):
# test_docs_links.py     every code link names a function its file defines (or is the file's
#                        own path), in-page anchors exist, every picture is shown and exists,
#                        and docs/make_pictures.sh (run with this build's mha and libmha.so)
#                        redraws exactly the committed docs/img;
# test_docs_formulas.py  the page's formulas and numbers against mha: the score definition and
#                        masks, dropout, the backward, the online softmax's worked example, the
#                        hand-made layer's weights and the pictures' mask stand-ins.
if(TARGET mha_shared AND TARGET mha_cli)
  foreach(t test_docs_links test_docs_formulas)
    mha_add_pytest(${t})
  endforeach()
endif()
