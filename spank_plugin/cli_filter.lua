--[[
cli_filter.lua: let users type --container=IMAGE for hpccont images.

Slurm (21.08+) owns --container for OCI bundle directories, and a SPANK plugin cannot register
that name.  This filter runs in srun, sbatch and salloc before anything is submitted and hands
every --container value that is not an OCI bundle (a directory with config.json) to the hpccont
SPANK plugin's own option, --hpccont-image.  OCI bundles stay with Slurm.

Two routes, because a cli_filter cannot set a SPANK option nor unset options.container:
 (a) the client re-executes itself with "--container" rewritten to "--hpccont-image" on its
     command line (guarded by an environment variable against loops).  Works for everything
     typed on the command line, including --export=NONE and an inner srun overriding the job's
     image.
 (b) set the variables through which Slurm passes SPANK option values, and blank
     options.container.  Taken for #SBATCH lines and scripts read from stdin (nothing to
     rewrite, or nothing left to read after a re-exec), and for an srun whose environment
     carries the value to its step (env_reaches_step): there it spares the step a second start
     of the client, its configuration and its plugins (bench/slurm: a one-task step 1.47x bare
     with the re-execution, 1.25x without).

Install: slurm.conf "CliFilterPlugins=cli_filter/lua", this file as cli_filter.lua next to
slurm.conf, and "LaunchParameters=use_interactive_step" for salloc.  A Lua error in a filter is
only logged by Slurm and the job would then run without its container, so every error here is
caught and refuses the submission instead.
]]

local PLUGIN = "hpccont"
local OPTION = "hpccont-image"
local GUARD = "HPCCONT_CLI_FILTER_REEXEC"

local ERROR = slurm.ERROR or slurm.FAILURE or -1

local have_posix, posix = pcall(require, "posix")

local function say(msg)
   io.stderr:write(msg .. "\n")
end

local function setenv(name, value)
   if have_posix then
      posix.setenv(name, value)   -- value nil unsets
   end
end

local function getenv(name)
   return os.getenv(name)
end

-- SPANK passes option values in "_SLURM_SPANK_OPTION_<plugin>_<option>", non-alphanumerics as "_".
local function spank_var(plugin, option)
   return "_SLURM_SPANK_OPTION_" .. (plugin:gsub("[^%w]", "_")) .. "_" .. (option:gsub("[^%w]", "_"))
end

local function is_readable(path)
   local f = io.open(path, "r")
   if f then
      f:close()
      return true
   end
   return false
end

local function is_oci_bundle(path)
   return is_readable(path .. "/config.json")
end

local function read_cmdline()
   local f = io.open("/proc/self/cmdline", "rb")
   if not f then return nil end
   local data = f:read("*a")
   f:close()
   local args = {}
   for a in data:gmatch("([^%z]*)%z") do
      args[#args + 1] = a
   end
   return args
end

-- The command line with the first "--container" whose value is `value` renamed, or nil.
local function rewrite(args, value)
   for i = 2, #args do
      local a = args[i]
      if a == "--" then return nil end
      if a == "--container=" .. value then
         args[i] = "--" .. OPTION .. "=" .. value
         return args
      end
      if a == "--container" and args[i + 1] == value then
         args[i] = "--" .. OPTION
         return args
      end
   end
   return nil
end

-- Every image typed before the command (--container and the plugin's own option), or {}.
local function typed_images(args, options)
   local out = {}
   local prog = options.argv and options.argv[1]
   local i = 2
   while i <= #args do
      local a = args[i]
      if a == "--" or (prog ~= nil and a == prog) then break end
      local v = a:match("^%-%-container=(.*)$") or a:match("^%-%-" .. OPTION:gsub("%-", "%%-") .. "=(.*)$")
      if v then
         out[#out + 1] = v
      elseif a == "--container" or a == "--" .. OPTION then
         out[#out + 1] = args[i + 1] or ""
         i = i + 1
      end
      i = i + 1
   end
   return out
end

-- "--container=" (what --container=$IMG gives with IMG unset) must not run the job on the
-- host, and two different images must not leave one of them silently ignored.
local function check_typed(options, args)
   local typed = typed_images(args or {}, options)
   for _, v in ipairs(typed) do
      if v == "" then
         error("empty image (an unset variable?); use --container=none for no container")
      end
      if v ~= typed[1] then
         error("two different images given: " .. typed[1] .. " and " .. v)
      end
   end
end

-- Container options without an image do nothing: say so once, in the client, and run.
local function warn_without_image(options)
   if getenv(GUARD) then return end   -- the re-executed client warns, not both passes
   local given = options.spank and options.spank[PLUGIN]
   if type(given) ~= "table" or given[OPTION] ~= nil then return end
   if options.container ~= nil and options.container ~= "" then return end
   if getenv("HPCCONT_CONTAINER") or getenv(spank_var(PLUGIN, OPTION))
         or getenv("SLURM_SPANK_" .. spank_var(PLUGIN, OPTION)) then
      return   -- the job's image is inherited
   end
   local names = {}
   -- Slurm lists every flag option, "set" or "unset"; options with a value only when given.
   for name, value in pairs(given) do
      if value ~= nil and value ~= "unset" then names[#names + 1] = "--" .. name end
   end
   if #names > 0 then
      table.sort(names)
      say("hpccont: warning: " .. table.concat(names, " ") .. " has no effect without --container")
   end
end

-- The directory this filter was loaded from: slurm.conf's, where oci.conf would be too.
local function conf_dir()
   local info = debug and debug.getinfo and debug.getinfo(1, "S")
   return info and info.source and info.source:match("^@(.*)/[^/]*$")
end

-- Whether route (b) alone gets an srun's image to its step, as (a) would:
--  - the client's environment goes to the step: --export (or SLURM_EXPORT_ENV) absent or ALL;
--  - no image inherited from the job: srun took that value as its own option at start-up and
--    would send it in place of ours (an inner "srun --container=B" in a job started with A);
--  - one command: a heterogeneous step (":") may name an image per component;
--  - no oci.conf beside slurm.conf: route (b) leaves Slurm's own container value an empty
--    string, which a node set up for Slurm's OCI containers would act on; unknown: assume one.
local function env_reaches_step(options, args)
   if options.type ~= "srun" then return false end
   local export = options.export
   if export ~= nil and export ~= "" and export ~= "ALL" and not export:match("^ALL,") then
      return false
   end
   if getenv(spank_var(PLUGIN, OPTION)) or getenv("SLURM_SPANK_" .. spank_var(PLUGIN, OPTION)) then
      return false
   end
   for i = 2, #args do
      if args[i] == ":" then return false end
   end
   local dir = conf_dir()
   if dir == nil or is_readable(dir .. "/oci.conf") then return false end
   return true
end

-- Route (a): never returns when it works.
local function reexec(options, value, args)
   if not have_posix or getenv(GUARD) then return false end
   -- sbatch reading its script from stdin has consumed it already.
   if options.type == "sbatch" and (options.argv == nil or options.argv[1] == nil)
         and (options.wrap == nil or options.wrap == "") then
      return false
   end
   if not args then return false end
   args = rewrite(args, value)
   if not args then return false end
   local argt = { [0] = args[1] }
   for i = 2, #args do argt[i - 1] = args[i] end
   setenv(GUARD, "1")
   io.stdout:flush()
   io.stderr:flush()
   posix.exec("/proc/self/exe", argt)
   setenv(GUARD, nil)   -- exec failed: fall back to route (b)
   return false
end

-- Route (b).
local function via_environment(options, value)
   if not have_posix then
      error("lua-posix is not installed: --container=IMAGE cannot reach the hpccont plugin")
   end
   local var = spank_var(PLUGIN, OPTION)
   setenv(var, value)
   if options.type ~= "srun" then
      -- sbatch/salloc hand their SPANK options to the job (and its sruns) with this prefix.
      setenv("SLURM_SPANK_" .. var, value)
   end
   setenv("SLURM_CONTAINER", nil)
   options.container = ""
end

-- What the plugin's client side sets after route (a) (srun_side.c), for an srun that took (b):
-- where a relative image path was typed, when --chdir sends the tasks elsewhere.
local function typed_here()
   local ok, cwd = pcall(posix.getcwd)
   cwd = ok and cwd or getenv("PWD")
   if cwd then setenv("HPCCONT_SLURM_CWD", cwd) end
end

local function route(options)
   if getenv(GUARD) then
      -- Second pass after route (a): the guard must not reach the job, where it would stop
      -- an inner srun's own rewrite.
      setenv(GUARD, nil)
   end
   local args = read_cmdline()   -- the client's command line, read once
   check_typed(options, args)
   warn_without_image(options)
   local value = options.container
   if value == nil or value == "" then return end
   if is_oci_bundle(value) then return end
   if have_posix and env_reaches_step(options, args or {}) then
      via_environment(options, value)
      typed_here()
   elseif not reexec(options, value, args) then
      via_environment(options, value)
   end
end

function slurm_cli_setup_defaults(options, early_pass)
   return slurm.SUCCESS
end

function slurm_cli_pre_submit(options, pack_offset)
   local ok, err = pcall(route, options)
   if not ok then
      say("hpccont: --container: " .. tostring(err):gsub("^[^:]*:%d+: ", ""))
      return ERROR
   end
   return slurm.SUCCESS
end

function slurm_cli_post_submit(offset, job_id, step_id)
   return slurm.SUCCESS
end
