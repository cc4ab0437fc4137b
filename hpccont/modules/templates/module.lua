-- @@GENERATED@@
-- hpccont-module: @@STAMP@@
help(@@HELP@@)

@@WHATIS@@

-- One container module at a time: Lmod swaps or refuses another member of this family.
family("container")

local central = @@IMAGE@@
local cache = os.getenv("HPCCONT_IMAGE_CACHE") or pathJoin(os.getenv("HOME") or "/nonexistent", ".local/share/hpccont/images")
local copy = pathJoin(cache, @@COPY_NAME@@)
-- A user's own copy (made by image-update) wins over the site's central image.
local image = central
if isFile(copy) then image = copy end

setenv("HPCCONT_MODULE", @@MODULE@@)
setenv("HPCCONT_IMAGE", image)
setenv("HPCCONT_IMAGE_CENTRAL", central)
setenv("HPCCONT_IMAGE_LOCAL", copy)
-- Wrapper scripts, not shell functions: they work under /bin/sh and reach srun steps.
prepend_path("PATH", @@BINDIR@@)
