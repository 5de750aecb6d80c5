"""`attnviz serve`: the Starlette app (`app`), its HTTP plumbing (`web`) and generation endpoint
(`generation`). The only package that imports Starlette and uvicorn."""
