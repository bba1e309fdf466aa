# The same knobs, with the same defaults, as the Ansible role's
# roles/web/defaults/main.yml: one site, the same result on either tool.
default['web']['packages'] = %w(nginx)
default['web']['port'] = 8080
# Also listen on [::]; turn off on hosts booted with ipv6.disable=1.
default['web']['listen_ipv6'] = true
default['web']['server_name'] = '_'
default['web']['root'] = '/var/www/site'
default['web']['site_name'] = 'site'
default['web']['site_title'] = 'rolebake example site'
# Refresh apt's package lists when they are missing or older than this (seconds).
default['web']['apt_cache_valid_time'] = 3600
# A server enables and starts nginx; an image build only needs it enabled
# (the image's command runs it), so image specs set ["enable"].
default['web']['service_actions'] = %w(enable start)
