#
# Cookbook:: web
# Recipe:: default
#
# nginx serving the team's static site: the Chef twin of the Ansible `web` role.
#
web = node['web']
available = "/etc/nginx/sites-available/#{web['site_name']}.conf"

# Base images ship without apt lists; refresh them when they are missing or
# stale, as the Ansible role's cache_valid_time does. Plain apt-get rather than
# apt_update, which would leave its stamp and apt.conf.d hook in the image.
execute 'apt-get update' do
  command 'apt-get -q update'
  environment('DEBIAN_FRONTEND' => 'noninteractive')
  not_if do
    lists = Dir.glob('/var/lib/apt/lists/*_Packages')
    !lists.empty? &&
      Time.now - lists.map { |f| ::File.mtime(f) }.max < web['apt_cache_valid_time']
  end
end

package web['packages'] do
  options '--no-install-recommends'
  action :install
end

directory web['root'] do
  owner 'root'
  group 'root'
  mode '0755'
  recursive true
end

template "#{web['root']}/index.html" do
  source 'index.html.erb'
  owner 'root'
  group 'root'
  mode '0644'
  variables(title: web['site_title'], port: web['port'])
end

template available do
  source 'site.conf.erb'
  owner 'root'
  group 'root'
  mode '0644'
  variables(
    port: web['port'],
    listen_ipv6: web['listen_ipv6'],
    server_name: web['server_name'],
    root: web['root'],
    site_name: web['site_name']
  )
  notifies :reload, 'service[nginx]', :delayed
end

link "/etc/nginx/sites-enabled/#{web['site_name']}.conf" do
  to available
  notifies :reload, 'service[nginx]', :delayed
end

# The distribution's default site would also claim port 80 and answer for `_`.
file '/etc/nginx/sites-enabled/default' do
  action :delete
  notifies :reload, 'service[nginx]', :delayed
end

service 'nginx' do
  supports status: true, reload: true, restart: true
  action web['service_actions'].map(&:to_sym)
end
