-- envd's language server for build files in Neovim 0.7 and later: `dofile` this from init.lua,
-- or copy it there. tests/tests/lsp.rs runs Neovim with exactly this file as its configuration.
vim.api.nvim_create_autocmd({ "BufRead", "BufNewFile" }, {
  pattern = "*.envd",
  command = "setfiletype envd",
})
vim.api.nvim_create_autocmd("FileType", {
  pattern = "envd",
  callback = function(args)
    -- build files are Starlark, which Neovim highlights as Python.
    vim.bo[args.buf].syntax = "python"
    vim.bo[args.buf].omnifunc = "v:lua.vim.lsp.omnifunc"
    local found = vim.fn.findfile("build.envd", ".;")
    local root = found ~= "" and vim.fn.fnamemodify(found, ":p:h") or vim.fn.getcwd()
    local cmd = { os.getenv("ENVD_BIN") or "envd", "lsp" }
    if vim.lsp.start then -- Neovim 0.8 and later: one client per root, reused
      vim.lsp.start({ name = "envd", cmd = cmd, root_dir = root })
    else -- Neovim 0.7
      _G.envd_lsp = _G.envd_lsp or vim.lsp.start_client({ name = "envd", cmd = cmd, root_dir = root })
      vim.lsp.buf_attach_client(args.buf, _G.envd_lsp)
    end
  end,
})
