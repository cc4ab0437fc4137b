#%Module1.0
## @@GENERATED@@
## hpccont-module: @@STAMP@@
proc ModulesHelp { } {
    puts stderr @@HELP@@
}

@@WHATIS@@

set module @@MODULE@@
# One container module at a time.  Environment Modules before 5.1 has no family: refuse instead.
if {[info commands family] ne ""} {
    family container
} elseif {[module-info mode load] && [info exists env(HPCCONT_MODULE)] && $env(HPCCONT_MODULE) ne $module} {
    error "container module $env(HPCCONT_MODULE) is loaded: unload it before loading $module"
}

set central @@IMAGE@@
if {[info exists env(HPCCONT_IMAGE_CACHE)]} {
    set cache $env(HPCCONT_IMAGE_CACHE)
} elseif {[info exists env(HOME)]} {
    set cache [file join $env(HOME) .local share hpccont images]
} else {
    set cache /nonexistent
}
set copy [file join $cache @@COPY_NAME@@]
# A user's own copy (made by image-update) wins over the site's central image.
set image $central
if {[file isfile $copy]} {
    set image $copy
}

setenv HPCCONT_MODULE $module
setenv HPCCONT_IMAGE $image
setenv HPCCONT_IMAGE_CENTRAL $central
setenv HPCCONT_IMAGE_LOCAL $copy
# Wrapper scripts, not shell functions: they work under /bin/sh and reach srun steps.
prepend-path PATH @@BINDIR@@
