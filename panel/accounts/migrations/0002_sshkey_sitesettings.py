import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='SiteSettings',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('signup_open', models.BooleanField(blank=True, help_text='Whether anyone may create a customer account. Empty: follow the BERTH_SIGNUP_OPEN environment setting.', null=True)),
                ('support_email', models.EmailField(blank=True, help_text='Where customers are told to write, e.g. about a suspension.', max_length=254)),
            ],
            options={
                'verbose_name': 'site settings',
                'verbose_name_plural': 'site settings',
            },
        ),
        migrations.CreateModel(
            name='SshKey',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=100)),
                ('public_key', models.TextField(help_text='One line: type, base64 key and comment.')),
                ('fingerprint', models.CharField(help_text='SHA256, as ssh-keygen -l shows it.', max_length=100)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('customer', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='ssh_keys', to='accounts.customer')),
            ],
            options={
                'ordering': ['name', 'id'],
                'constraints': [models.UniqueConstraint(fields=('customer', 'fingerprint'), name='ssh_key_once_per_customer'), models.UniqueConstraint(fields=('customer', 'name'), name='ssh_key_name_per_customer')],
            },
        ),
    ]
